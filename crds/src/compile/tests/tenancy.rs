//! Namespaces are tenants: the compile side (see `compile/tenancy.rs`).

use super::*;

const TENANTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: victim, labels: {tier: gold}}
---
apiVersion: v1
kind: Namespace
metadata: {name: evil, labels: {tier: bronze}}
---
apiVersion: v1
kind: Namespace
metadata: {name: partner, labels: {tier: gold}}
---
apiVersion: v1
kind: Secret
metadata: {name: keys, namespace: victim}
stringData: {app: sk-victim-app-0001}
---
apiVersion: v1
kind: Secret
metadata: {name: keys, namespace: evil}
stringData: {copy: sk-victim-app-0001, own: sk-evil-own-00001}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: mock, namespace: victim}
spec: {provider: mock}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: mock, namespace: evil}
spec: {provider: mock}
"#;

fn tenants(extra: &str) -> World {
    let mut w = World::default();
    w.add_yaml("tenants.yaml", TENANTS);
    w.add_yaml("extra.yaml", extra);
    w
}

fn reason(c: &Compiled, ns: &str, name: &str) -> Option<(&'static str, String)> {
    c.diagnostics
        .iter()
        .find(|d| d.resource.namespace == ns && d.resource.name == name)
        .map(|d| (d.reason, d.message.clone()))
}

#[test]
fn model_names_are_claimed_per_namespace_and_globs_never_overlap_in_one() {
    let c = compile(&tenants(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: chat, namespace: victim, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {models: ["claude-*", gpt-4o], backends: [{pool: mock}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: wide, namespace: victim, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {models: ["*-opus-*"], backends: [{pool: mock}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: exact, namespace: victim, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {models: [claude-opus-4-1], backends: [{pool: mock}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: capture, namespace: evil, creationTimestamp: "2025-01-01T00:00:00Z"}
spec: {models: [gpt-4o, "*"], backends: [{pool: mock}], keyNamespaces: {from: All}}
"#,
    ));
    // Within a namespace, the newer overlapping glob loses and says to whom.
    let (r, m) = reason(&c, "victim", "wide").expect("overlap rejected");
    assert_eq!(r, "ModelConflict");
    assert!(m.contains("victim/chat"), "{m}");
    // An exact name beside a glob of its own namespace is fine (it is narrower).
    assert!(reason(&c, "victim", "exact").is_none());
    // Another namespace claiming the same names, older and admitting everyone, neither
    // blocks the victim's routes nor is blocked by them.
    assert!(reason(&c, "victim", "chat").is_none());
    assert!(reason(&c, "evil", "capture").is_none());
    let capture = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.id == "evil/capture")
        .expect("compiled");
    assert!(capture.key_namespaces_all);
}

#[test]
fn a_selector_admits_the_namespaces_whose_labels_match() {
    let c = compile(&tenants(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: shared, namespace: victim}
spec: {models: [shared], backends: [{pool: mock}], keyNamespaces: {from: Selector, selector: {matchLabels: {tier: gold}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: broken, namespace: victim}
spec: {models: [broken], backends: [{pool: mock}], keyNamespaces: {from: Selector}}
"#,
    ));
    let shared = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.id == "victim/shared")
        .expect("compiled");
    assert_eq!(shared.key_namespaces, ["partner"]);
    assert!(!shared.key_namespaces_all);
    let (r, m) = reason(&c, "victim", "broken").expect("rejected");
    assert_eq!(r, "Invalid");
    assert!(m.contains("spec.keyNamespaces.selector"), "{m}");
}

#[test]
fn keys_name_other_namespaces_literally_and_duplicates_name_no_other_tenant() {
    let c = compile(&tenants(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: app, namespace: victim, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {secretRef: {name: keys, key: app}, allowedRoutes: [chat, "partner/shared-*"]}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: copy, namespace: evil, creationTimestamp: "2026-06-01T00:00:00Z"}
spec: {secretRef: {name: keys, key: copy}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: everywhere, namespace: evil}
spec: {secretRef: {name: keys, key: own}, allowedRoutes: ["*/*"]}
"#,
    ));
    let app = c
        .snapshot
        .keys
        .iter()
        .find(|k| k.id == "victim/app")
        .expect("compiled");
    assert_eq!(app.allowed_routes, ["victim/chat", "partner/shared-*"]);
    let (r, m) = reason(&c, "evil", "copy").expect("duplicate rejected");
    assert_eq!(r, "DuplicateKey");
    assert!(
        !m.contains("victim") && !m.contains("app"),
        "names nothing of the other tenant: {m}"
    );
    let (r, m) = reason(&c, "evil", "everywhere").expect("glob namespace rejected");
    assert_eq!(r, "Invalid");
    assert!(m.contains("spec.allowedRoutes[0]"), "{m}");
}

#[test]
fn a_guardrails_key_targets_stay_in_its_namespace() {
    let c = compile(&tenants(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: tap, namespace: evil}
spec: {targets: {keys: [app], keySelector: {matchLabels: {team: payments}}}, webhook: {url: "http://evil.example/hook"}}
"#,
    ));
    let tap = &c.snapshot.guardrails[0];
    assert_eq!(
        tap.keys,
        ["evil/app"],
        "a bare name is a key of its own namespace"
    );
    assert!(tap.routes.is_empty(), "no route of another namespace");
}

#[test]
fn resources_of_namespaces_not_served_are_left_out_and_say_why() {
    let mut w = tenants(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: chat, namespace: victim}
spec: {models: [chat], backends: [{pool: mock}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: chat, namespace: evil}
spec: {models: [chat], backends: [{pool: mock}]}
"#,
    );
    w.served = Some(["victim".to_owned()].into());
    let c = compile(&w);
    assert_eq!(
        reason(&c, "evil", "chat").map(|(r, _)| r),
        Some("NamespaceNotServed")
    );
    assert_eq!(
        reason(&c, "evil", "mock").map(|(r, _)| r),
        Some("NamespaceNotServed")
    );
    assert!(reason(&c, "victim", "chat").is_none());
    let ids: Vec<&str> = c.snapshot.routes.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["victim/chat"]);
}

#[test]
fn a_key_value_claimed_by_two_namespaces_at_once_serves_neither() {
    let keys = |victim_at: &str, evil_at: &str| {
        let mut w = tenants(&format!(
            r#"
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: app, namespace: victim, creationTimestamp: "{victim_at}"}}
spec: {{secretRef: {{name: keys, key: app}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: copy, namespace: evil, creationTimestamp: "{evil_at}"}}
spec: {{secretRef: {{name: keys, key: copy}}}}
"#
        ));
        w.served = None;
        compile(&w)
    };
    // The same second: neither is served, and neither message names the other.
    let c = keys("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
    for (ns, name) in [("victim", "app"), ("evil", "copy")] {
        let (r, m) = reason(&c, ns, name).expect("rejected");
        assert_eq!(r, "DuplicateKey");
        assert!(!m.contains("victim/") && !m.contains("evil/"), "{m}");
    }
    assert!(c.snapshot.keys.is_empty());
    assert!(c.snapshot.resources.iter().all(|r| r.kind != "VirtualKey"));
    // The older keeps it, whichever namespace sorts first.
    let c = keys("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z");
    assert!(reason(&c, "victim", "app").is_none());
    assert_eq!(
        reason(&c, "evil", "copy").map(|(r, _)| r),
        Some("DuplicateKey")
    );
    let ids: Vec<&str> = c.snapshot.keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, ["victim/app"]);
}
