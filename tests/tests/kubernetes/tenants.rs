//! Namespaces are tenants, on the real API server: a victim namespace serves its traffic; an
//! attacker namespace replays every capture a review found (a Guardrail selecting the
//! victim's key labels with a webhook, an exact model name beating the victim's glob, a route
//! for every name admitting every namespace, a key with copied labels naming the victim's
//! routes, a copy of the victim's key value, a VirtualKey over a foreign Secret value), and
//! each is refused while the victim's traffic stays as it was. Then the chart's RBAC with
//! `watchNamespaces`: the operator may read Secrets of the namespaces it serves and no other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use switchyard_tests::kube::{KubeEnv, RELEASE, SYSTEM_NAMESPACE};
use switchyard_tests::procs::{Proc, eventually};

use super::{K8S_DEADLINE, condition, get_json};
use crate::common::*;

const VICTIM: &str = "tenant-victim";
const EVIL: &str = "tenant-evil";
const VICTIM_KEY: &str = "sk-tenant-victim-0001";
const EVIL_KEY: &str = "sk-tenant-evil-00001";

fn apply_in(kube: &KubeEnv, ns: &str, yaml: &str) {
    kube.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], Some(yaml))
        .unwrap_or_else(|e| panic!("kubectl apply -n {ns} failed: {e}\n{yaml}"));
}

/// A webhook that counts what reaches it and allows everything.
async fn recorder() -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::Relaxed);
            axum::Json(serde_json::json!({"action": "allow"}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/check", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hits)
}

/// A chat call: status, which backend answered, what the guardrails did, the body.
async fn call(api: &str, key: &str, model: &str, prompt: &str) -> (u16, String, String, Value) {
    let r = client()
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(model, prompt))
        .send()
        .await
        .expect("send");
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (backend, guards) = (
        header("x-switchyard-backend"),
        header("x-switchyard-guardrails"),
    );
    let status = r.status().as_u16();
    (
        status,
        backend,
        guards,
        r.json().await.unwrap_or(Value::Null),
    )
}

pub(crate) async fn victim_and_attacker(
    kube: &KubeEnv,
    dps: &[(Proc, String, String)],
    mock_url: &str,
    chart: &str,
    kube_version: &str,
) {
    for ns in [VICTIM, EVIL] {
        kube.kubectl(&["create", "namespace", ns])
            .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    }
    let pool = |ns: &str| {
        format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: upstream, labels: {{switchyard.dev/secret: "true"}}}}
stringData: {{api-key: sk-upstream-{ns}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: mock}}
spec:
  provider: openai
  endpoints: [{{url: "{mock_url}/v1", credentialSecretRef: {{name: upstream, key: api-key}}}}]
  models: [{{name: mock-gpt}}]
"#
        )
    };
    apply_in(
        kube,
        VICTIM,
        &format!(
            r#"{}
---
apiVersion: v1
kind: Secret
metadata: {{name: keys, labels: {{switchyard.dev/secret: "true"}}}}
stringData: {{app: {VICTIM_KEY}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: app, labels: {{team: payments}}}}
spec: {{secretRef: {{name: keys, key: app}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec: {{models: ["gpt-*", victim-only], backends: [{{pool: mock, model: mock-gpt}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {{name: pii}}
spec: {{targets: {{routes: [chat]}}, pii: {{entities: [Email], action: Redact}}}}
"#,
            pool(VICTIM)
        ),
    );
    let api = &dps[0].1;
    for (_, api, _) in dps {
        eventually(
            K8S_DEADLINE,
            "the victim's route serves, guarded",
            || async {
                let (s, backend, guards, _) =
                    call(api, VICTIM_KEY, "gpt-4o", "mail a@b.example").await;
                (s == 200
                    && backend == format!("{VICTIM}/mock#0")
                    && guards == format!("{VICTIM}/pii=redact"))
                .then_some(())
            },
        )
        .await;
    }

    // A key value claimed by two namespaces in the same second serves neither (their ages
    // cannot be told apart): let the victim's key be older by a second, as a real victim's
    // is, so that the copy below loses it.
    let created = get_json(kube, &["virtualkey", "app", "-n", VICTIM])
        .and_then(|v| {
            v["metadata"]["creationTimestamp"]
                .as_str()
                .map(str::to_owned)
        })
        .and_then(|t| switchyard_crds::validate::timestamp_unix("creationTimestamp", &t).ok())
        .unwrap_or(0);
    eventually(K8S_DEADLINE, "a second after the victim's key", || async {
        (switchyard_tests::kube::unix_now() > created).then_some(())
    })
    .await;

    // The attacker's namespace: every capture at once.
    let (hook, hits) = recorder().await;
    apply_in(
        kube,
        EVIL,
        &format!(
            r#"{}
---
apiVersion: v1
kind: Secret
metadata: {{name: keys, labels: {{switchyard.dev/secret: "true"}}}}
stringData: {{own: {EVIL_KEY}, copy: {VICTIM_KEY}, aws: AKIAIOSFODNN7EXAMPLEKEY}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: tap, labels: {{team: payments}}}}
spec: {{secretRef: {{name: keys, key: own}}, allowedRoutes: ["{VICTIM}/*", "{EVIL}/*"]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: copycat}}
spec: {{secretRef: {{name: keys, key: copy}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: peek}}
spec: {{secretRef: {{name: keys, key: aws}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: capture}}
spec:
  models: [gpt-4o, "*"]
  backends: [{{pool: mock, model: mock-gpt}}]
  keyNamespaces: {{from: All}}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {{name: tap}}
spec:
  targets: {{keySelector: {{matchLabels: {{team: payments}}}}}}
  webhook: {{url: "{hook}", failureMode: Open}}
"#,
            pool(EVIL)
        ),
    );
    // The attacker's own key reaches the attacker's routes (and its webhook): the config
    // is in place.
    for (_, api, _) in dps {
        eventually(K8S_DEADLINE, "the attacker's config is served", || async {
            let before = hits.load(Ordering::Relaxed);
            let (s, backend, _, _) = call(api, EVIL_KEY, "anything", "hi").await;
            let hooked = hits.load(Ordering::Relaxed) > before;
            (s == 200 && backend == format!("{EVIL}/mock#0") && hooked).then_some(())
        })
        .await;
    }
    let own_hits = hits.load(Ordering::Relaxed);

    for (_, api, _) in dps {
        // Same traffic as before: the victim's route, the victim's guardrail, on gpt-4o
        // (which the attacker serves by exact name) and every other name.
        let (s, backend, guards, b) = call(api, VICTIM_KEY, "gpt-4o", "mail a@b.example").await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(backend, format!("{VICTIM}/mock#0"), "not captured");
        assert_eq!(guards, format!("{VICTIM}/pii=redact"), "still guarded");
        // A name only the attacker's `*` serves is unknown to the victim's key.
        let (s, _, _, b) = call(api, VICTIM_KEY, "claude-opus-4-1", "hi").await;
        assert_eq!(s, 404, "{b}");
        // The attacker's key, with the victim's labels and naming the victim's routes,
        // reaches none of them (the victim's route admits only its own namespace).
        for _ in 0..2 {
            let (s, backend, _, b) = call(api, EVIL_KEY, "victim-only", "hi").await;
            assert_eq!(s, 200, "{b}");
            assert_eq!(
                backend,
                format!("{EVIL}/mock#0"),
                "its own `*` answers, never the victim's route"
            );
        }
    }
    assert_eq!(
        hits.load(Ordering::Relaxed),
        own_hits + 2 * dps.len() as u64,
        "the attacker's webhook saw only the attacker's own requests"
    );
    // The victim's models list is the victim's.
    let models: Value = client()
        .get(format!("{api}/v1/models"))
        .bearer_auth(VICTIM_KEY)
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert!(
        !models.to_string().contains("claude"),
        "nothing of the attacker's: {models}"
    );

    // Status names nothing of the victim, and shows nothing of a Secret's value.
    let copycat = eventually(K8S_DEADLINE, "copycat rejected", || async {
        let v = get_json(kube, &["virtualkey", "copycat", "-n", EVIL])?;
        let c = condition(&v, "Accepted")?;
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert_eq!(copycat["reason"], "DuplicateKey");
    let message = copycat["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains(VICTIM) && !message.contains("app"),
        "{message}"
    );
    let peek = eventually(K8S_DEADLINE, "peek's fingerprint", || async {
        let v = get_json(kube, &["virtualkey", "peek", "-n", EVIL])?;
        v["status"]["keyPrefix"].as_str().map(str::to_owned)
    })
    .await;
    assert!(
        peek.starts_with("sha256:") && !peek.contains("AKIA"),
        "{peek}"
    );

    // Least privilege: with watchNamespaces the operator may read Secrets of the namespaces
    // it serves, and of no other; without it, the chart documents the cluster-wide grant.
    let scoped = kube
        .helm(&[
            "template",
            "scoped",
            chart,
            "-n",
            SYSTEM_NAMESPACE,
            "--kube-version",
            kube_version,
            "--set",
            &format!("controlPlane.watchNamespaces={{{VICTIM}}}"),
        ])
        .unwrap_or_else(|e| panic!("helm template: {e}"));
    let rbac: Vec<&str> = scoped
        .split("\n---")
        .filter(|d| {
            [
                "kind: ServiceAccount",
                "kind: ClusterRole\n",
                "kind: ClusterRoleBinding",
                "kind: Role\n",
                "kind: RoleBinding",
            ]
            .iter()
            .any(|k| d.contains(k))
        })
        .collect();
    // Objects of the served namespaces name it; the rest go to the release namespace.
    let served = format!("namespace: {VICTIM}");
    let (theirs, ours): (Vec<&str>, Vec<&str>) = rbac.iter().partition(|d| d.contains(&served));
    kube.kubectl_stdin(
        &["apply", "-n", SYSTEM_NAMESPACE, "-f", "-"],
        Some(&ours.join("\n---\n")),
    )
    .unwrap_or_else(|e| panic!("scoped RBAC: {e}"));
    kube.kubectl_stdin(&["apply", "-f", "-"], Some(&theirs.join("\n---\n")))
        .unwrap_or_else(|e| panic!("scoped RBAC in {VICTIM}: {e}"));
    let can = |release: &str, verb: &str, what: &str, ns: Option<&str>| {
        let who =
            format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{release}-switchyard-control-plane");
        let mut args = vec!["auth", "can-i", verb, what, "--as", who.as_str()];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        kube.kubectl(&args)
            .map(|o| o.trim() == "yes")
            .unwrap_or(false)
    };
    assert!(can("scoped", "list", "secrets", Some(VICTIM)));
    assert!(can("scoped", "create", "secrets", Some(VICTIM)));
    assert!(!can("scoped", "list", "secrets", Some(EVIL)));
    assert!(!can("scoped", "list", "secrets", Some(SYSTEM_NAMESPACE)));
    assert!(
        !can("scoped", "get", "secrets", Some(VICTIM)),
        "no get by name"
    );
    assert!(can("scoped", "list", "namespaces", None));
    assert!(can(
        "scoped",
        "list",
        "llmroutes.switchyard.dev",
        Some(EVIL)
    ));
    // The default install: cluster-wide, as the chart says.
    assert!(can(RELEASE, "list", "secrets", Some(EVIL)));
}
