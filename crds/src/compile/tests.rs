use super::*;

mod cache;
mod tenancy;

const BASE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {alice: sk-alice-123456, bob: sk-bob-1234567, openai: sk-upstream}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: demo, inputPricePerMillion: "0.5", outputPricePerMillion: "1.5"}]
  mock: {latency: 10ms, tokensPerSecond: 100}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: openai}
spec:
  provider: openai
  endpoints: [{url: "https://api.openai.com/v1/", credentialSecretRef: {name: keys, key: openai}}]
  models: [{name: gpt-4o}]
  timeouts: {connect: 2s, firstByte: 30s}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: demo}
spec:
  models: [demo]
  backends: [{pool: mock, weight: 3}, {pool: openai, model: gpt-4o, weight: 1}]
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: alice, labels: {team: a}}
spec: {secretRef: {name: keys, key: alice}, allowedModels: [demo], expiresAt: "2030-01-01T00:00:00Z"}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: bob}
spec: {secretRef: {name: keys, key: bob}, disabled: true}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: pii}
spec: {pii: {entities: [Email, CreditCard], action: Mask}, denyPatterns: ["(?i)ignore previous"]}
"#;

/// The message of the diagnostic on the resource named `name` (empty when none).
fn diagnostic(c: &Compiled, name: &str) -> String {
    c.diagnostics
        .iter()
        .find(|d| d.resource.name == name)
        .map(|d| d.message.clone())
        .unwrap_or_default()
}

fn world(extra: &str) -> World {
    let mut w = World::default();
    w.add_yaml("base.yaml", BASE);
    w.add_yaml("extra.yaml", extra);
    w
}

fn reasons(c: &Compiled) -> Vec<(String, &'static str, &'static str)> {
    c.diagnostics
        .iter()
        .map(|d| (d.resource.to_string(), d.condition, d.reason))
        .collect()
}

#[test]
fn valid_world_compiles_everything() {
    let c = compile(&world(""));
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let s = &c.snapshot;
    assert_eq!(s.pools.len(), 2);
    assert_eq!(s.routes.len(), 1);
    assert_eq!(s.keys.len(), 2);
    assert_eq!(s.guardrails.len(), 1);
    assert_eq!(s.resources.len(), 6);

    let openai = s
        .pools
        .iter()
        .find(|p| p.id == "default/openai")
        .expect("openai pool");
    assert_eq!(openai.endpoints[0].url, "https://api.openai.com/v1");
    assert_eq!(openai.endpoints[0].credential, "sk-upstream");
    let t = openai.timeouts.expect("timeouts");
    assert_eq!(
        (t.connect_ms, t.first_byte_ms, t.total_ms),
        (2000, 30_000, 600_000)
    );

    let mock = s
        .pools
        .iter()
        .find(|p| p.id == "default/mock")
        .expect("mock pool");
    assert_eq!(mock.models[0].input_price_per_million_micros, 500_000);
    assert_eq!(mock.mock.expect("mock").latency_ms, 10);

    let route = &s.routes[0];
    assert_eq!(route.backends[0].pool, "default/mock");
    assert_eq!(route.backends[1].model, "gpt-4o");
    assert_eq!(route.backends[0].weight, 3);

    let alice = s
        .keys
        .iter()
        .find(|k| k.id == "default/alice")
        .expect("alice");
    assert_eq!(alice.key_sha256, key_hash("sk-alice-123456"));
    assert_eq!(alice.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(alice.expires_at_unix, 1_893_456_000);
    assert!(s.keys.iter().any(|k| k.id == "default/bob" && k.disabled));

    assert_eq!(s.guardrails[0].pii_action, "Mask");
    // No targets: every route of its namespace.
    assert!(!s.guardrails[0].routes.is_empty());
    assert!(
        s.guardrails[0]
            .routes
            .iter()
            .all(|r| r.starts_with("default/"))
    );
    assert!(s.guardrails[0].keys.is_empty());
}

#[test]
fn snapshot_never_carries_plain_keys() {
    let c = compile(&world(""));
    let bytes = c.snapshot.encode_to_vec();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("sk-alice-123456"));
    assert!(!text.contains("sk-bob-1234567"));
}

#[test]
fn version_is_a_content_hash() {
    let a = compile(&world(""));
    let b = compile(&world(""));
    assert_eq!(a.snapshot.version, b.snapshot.version);
    assert_eq!(a.snapshot.version.len(), 16);
    let mut w = world("");
    w.keys[0].spec.disabled = true;
    assert_ne!(compile(&w).snapshot.version, a.snapshot.version);
    // Input order does not matter.
    let mut w = world("");
    w.pools.reverse();
    w.keys.reverse();
    assert_eq!(compile(&w).snapshot.version, a.snapshot.version);
}

#[test]
fn invalid_resource_is_left_out_alone() {
    let c = compile(&world(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: broken}
spec: {models: ["bad name"], backends: [{pool: mock}]}
"#,
    ));
    assert_eq!(
        reasons(&c),
        vec![("LLMRoute default/broken".into(), "Accepted", "Invalid")]
    );
    assert!(
        c.diagnostics[0].message.contains("spec.models[0]"),
        "{}",
        c.diagnostics[0].message
    );
    assert_eq!(c.snapshot.routes.len(), 1);
    assert_eq!(c.snapshot.pools.len(), 2);
}

#[test]
fn unresolved_references_are_reported() {
    let c = compile(&world(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: ghost}
spec: {models: [x], backends: [{pool: nowhere}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: wrong-model}
spec: {models: [y], backends: [{pool: openai, model: gpt-9}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: nosecret}
spec: {secretRef: {name: missing}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: anth}
spec: {provider: anthropic, endpoints: [{url: "https://api.anthropic.com", credentialSecretRef: {name: keys, key: nope}}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: via-anth}
spec: {models: [z], backends: [{pool: anth}]}
"#,
    ));
    let mut r = reasons(&c);
    r.sort();
    assert_eq!(
        r,
        vec![
            (
                "LLMRoute default/ghost".into(),
                "ResolvedRefs",
                "PoolNotFound"
            ),
            (
                "LLMRoute default/via-anth".into(),
                "ResolvedRefs",
                "PoolNotAccepted"
            ),
            (
                "LLMRoute default/wrong-model".into(),
                "ResolvedRefs",
                "ModelNotServed"
            ),
            (
                "ProviderPool default/anth".into(),
                "ResolvedRefs",
                "SecretKeyNotFound"
            ),
            (
                "VirtualKey default/nosecret".into(),
                "ResolvedRefs",
                "SecretNotFound"
            ),
        ]
    );
}

#[test]
fn duplicate_keys_and_bad_fields_are_rejected() {
    let c = compile(&world(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: zz-copy}
spec: {secretRef: {name: keys, key: alice}}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: badre}
spec: {denyPatterns: ["(unclosed"]}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: badurl}
spec: {provider: openai-compatible, endpoints: [{url: "ftp://x"}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: gem}
spec: {provider: gemini, endpoints: [{url: "https://x"}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: az}
spec: {provider: azure-openai, endpoints: [{url: "https://x.openai.azure.com", credentialSecretRef: {name: keys, key: openai}}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: slow}
spec: {provider: openai-compatible, endpoints: [{url: "http://x"}], timeouts: {total: forever}}
"#,
    ));
    let mut r = reasons(&c);
    r.sort();
    assert_eq!(
        r,
        vec![
            ("Guardrail default/badre".into(), "Accepted", "Invalid"),
            ("ProviderPool default/az".into(), "Accepted", "Invalid"),
            ("ProviderPool default/badurl".into(), "Accepted", "Invalid"),
            (
                "ProviderPool default/gem".into(),
                "ResolvedRefs",
                "MissingCredential"
            ),
            ("ProviderPool default/slow".into(), "Accepted", "Invalid"),
            (
                "VirtualKey default/zz-copy".into(),
                "Accepted",
                "DuplicateKey"
            ),
        ]
    );
}

#[test]
fn gemini_and_bedrock_pools_compile_with_their_settings() {
    let c = compile(&world(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: aws}
stringData: {AWS_ACCESS_KEY_ID: AKIDEXAMPLE, AWS_SECRET_ACCESS_KEY: secret-example}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: gem}
spec: {provider: gemini, endpoints: [{url: "https://generativelanguage.googleapis.com", credentialSecretRef: {name: keys, key: openai}}],
       models: [{name: gemini-2.5-flash, inputPricePerMillion: "0.30", cacheReadPricePerMillion: "0.03"}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: br}
spec: {provider: bedrock, bedrock: {region: us-west-2}, endpoints: [{url: "https://bedrock-runtime.us-west-2.amazonaws.com", awsCredentialsSecretRef: {name: aws}}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: br-env}
spec: {provider: bedrock, bedrock: {region: eu-west-1}, endpoints: [{url: "https://bedrock-runtime.eu-west-1.amazonaws.com"}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: br-noregion}
spec: {provider: bedrock, endpoints: [{url: "https://x"}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: oa-aws}
spec: {provider: openai-compatible, endpoints: [{url: "https://x", awsCredentialsSecretRef: {name: aws}}]}
"#,
    ));
    let mut r = reasons(&c);
    r.sort();
    assert_eq!(
        r,
        vec![
            (
                "ProviderPool default/br-noregion".into(),
                "Accepted",
                "Invalid"
            ),
            ("ProviderPool default/oa-aws".into(), "Accepted", "Invalid"),
        ]
    );
    let pool = |id: &str| {
        c.snapshot
            .pools
            .iter()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("{id} compiled"))
    };
    let g = pool("default/gem");
    assert_eq!(g.provider(), pb::ProviderKind::Gemini);
    assert_eq!(g.api_version, "v1beta");
    assert_eq!(g.models[0].cache_read_price_per_million_micros, 30_000);
    assert_eq!(g.models[0].cache_write_price_per_million_micros, 0);
    let b = pool("default/br");
    assert_eq!(b.region, "us-west-2");
    let aws = b.endpoints[0]
        .aws
        .as_ref()
        .expect("credentials from the Secret");
    assert_eq!(aws.access_key_id, "AKIDEXAMPLE");
    assert_eq!(aws.session_token, "");
    assert!(pool("default/br-env").endpoints[0].aws.is_none());
}

#[test]
fn credentials_from_env() {
    let mut w = world(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: envpool}
spec: {provider: openai, endpoints: [{url: "https://api.openai.com/v1", credentialEnv: OPENAI_API_KEY}]}
"#,
    );
    assert_eq!(w.referenced_env(), vec!["OPENAI_API_KEY".to_owned()]);
    let c = compile(&w);
    assert_eq!(
        reasons(&c),
        vec![(
            "ProviderPool default/envpool".into(),
            "ResolvedRefs",
            "EnvNotFound"
        )]
    );
    w.env.insert("OPENAI_API_KEY".into(), "sk-env".into());
    let c = compile(&w);
    assert!(c.diagnostics.is_empty());
    let p = c
        .snapshot
        .pools
        .iter()
        .find(|p| p.id == "default/envpool")
        .expect("pool");
    assert_eq!(p.endpoints[0].credential, "sk-env");
}

#[test]
fn parse_errors_become_diagnostics() {
    let mut w = world("");
    w.add_yaml("broken.yaml", "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: x}\nspec: {models: 3}\n");
    let c = compile(&w);
    assert_eq!(
        reasons(&c),
        vec![("File /broken.yaml#0".into(), "Accepted", "ParseError")]
    );
    assert_eq!(c.snapshot.routes.len(), 1);
}

#[test]
fn limits_budgets_and_allowed_routes_compile() {
    let c = compile(&world(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: carol, namespace: team}
stringData: {key: sk-carol-123456}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: carol, namespace: team}
spec:
  secretRef: {name: carol}
  allowedRoutes: [chat-*, shared/embed]
  limits: {requestsPerMinute: 60, tokensPerMinute: 10000, maxParallelRequests: 4}
  modelLimits: [{model: "gpt-4o*", limits: {requestsPerMinute: 5}}]
  budget: {amount: "12.50", period: Weekly, action: Alert}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: limited}
spec:
  models: [limited]
  backends: [{pool: mock}]
  limits: {tokensPerMinute: 500}
"#,
    ));
    assert!(c.diagnostics.is_empty(), "{:?}", reasons(&c));
    let carol = c
        .snapshot
        .keys
        .iter()
        .find(|k| k.id == "team/carol")
        .expect("carol compiled");
    assert_eq!(carol.allowed_routes, ["team/chat-*", "shared/embed"]);
    let l = carol.limits.expect("limits");
    assert_eq!(
        (l.requests_per_minute, l.tokens_per_minute, l.max_parallel),
        (60, 10_000, 4)
    );
    assert_eq!(carol.model_limits[0].model, "gpt-4o*");
    assert_eq!(
        carol.model_limits[0].limits.map(|l| l.requests_per_minute),
        Some(5)
    );
    let b = carol.budget.expect("budget");
    assert_eq!(b.amount_nanos, 12_500_000_000);
    assert_eq!(b.period(), pb::BudgetPeriod::Weekly);
    assert!(b.alert_only);
    let alice = c.snapshot.keys.iter().find(|k| k.id == "default/alice");
    assert!(alice.is_some_and(|k| k.budget.is_none() && k.limits.is_none()));
    let route = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.id == "default/limited")
        .expect("route");
    assert_eq!(route.limits.map(|l| l.tokens_per_minute), Some(500));
}

#[test]
fn bad_budget_amount_rejects_only_that_key() {
    let c = compile(&world(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: dave}
spec: {secretRef: {name: dave}, budget: {amount: "-3"}}
---
apiVersion: v1
kind: Secret
metadata: {name: dave}
stringData: {key: sk-dave-1234567}
"#,
    ));
    let d = c
        .diagnostics
        .iter()
        .find(|d| d.resource.to_string().contains("dave"))
        .expect("dave rejected");
    assert_eq!(d.condition, "Accepted");
    assert!(d.message.contains("spec.budget.amount"), "{d}");
    assert!(c.snapshot.keys.iter().any(|k| k.id == "default/alice"));
    assert!(!c.snapshot.keys.iter().any(|k| k.id == "default/dave"));
}

/// Sets `creationTimestamp` on a resource of the world.
fn created<K: kube::Resource<DynamicType = ()>>(items: &mut [K], name: &str, at: &str) {
    let obj = items
        .iter_mut()
        .find(|o| o.meta().name.as_deref() == Some(name))
        .expect("object");
    obj.meta_mut().creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        at.parse().expect("timestamp"),
    ));
}

#[test]
fn the_older_resource_keeps_a_contested_model_or_key() {
    let extra = r#"
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: aa-newcomer}
spec: {models: [demo, other], backends: [{pool: mock}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: globs}
spec: {models: ["dem*"], backends: [{pool: mock}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: aa-copy}
spec: {secretRef: {name: keys, key: alice}}
"#;
    let mut w = world(extra);
    created(&mut w.routes, "demo", "2026-01-01T00:00:00Z");
    created(&mut w.routes, "aa-newcomer", "2026-06-01T00:00:00Z");
    created(&mut w.keys, "alice", "2026-01-01T00:00:00Z");
    created(&mut w.keys, "aa-copy", "2026-06-01T00:00:00Z");
    let c = compile(&w);
    let d = |name: &str| {
        c.diagnostics
            .iter()
            .find(|d| d.resource.name == name)
            .map(|d| (d.reason, d.message.clone()))
    };
    // The newcomer sorts first by name but is younger: it loses, and says to whom.
    let (reason, message) = d("aa-newcomer").expect("newcomer rejected");
    assert_eq!(reason, "ModelConflict");
    assert!(message.contains("LLMRoute default/demo"), "{message}");
    let (reason, message) = d("aa-copy").expect("copy rejected");
    assert_eq!(reason, "DuplicateKey");
    assert!(message.contains("VirtualKey default/alice"), "{message}");
    assert!(d("demo").is_none() && d("alice").is_none() && d("globs").is_none());
    assert!(c.snapshot.routes.iter().any(|r| r.id == "default/demo"));
    // Snapshot order stays by id whatever the age order.
    let ids: Vec<&str> = c.snapshot.routes.iter().map(|r| r.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);

    // Swap the ages: the other one wins.
    created(&mut w.routes, "demo", "2026-09-01T00:00:00Z");
    created(&mut w.keys, "alice", "2026-09-01T00:00:00Z");
    let c = compile(&w);
    let rejected: Vec<&str> = c
        .diagnostics
        .iter()
        .map(|d| d.resource.name.as_str())
        .collect();
    assert_eq!(rejected, vec!["demo", "alice"]);
}

#[test]
fn a_delta_carries_only_what_changed_and_rebuilds_the_target() {
    let a = compile(&world(""));
    let mut w = world(
        "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: zz-new}\nspec: {models: [zz], backends: [{pool: mock}]}\n",
    );
    w.keys.retain(|k| k.metadata.name.as_deref() != Some("bob"));
    w.keys[0].spec.disabled = true;
    let b = compile(&w);
    let d = crate::delta(&a, &b);
    assert_eq!(d.base_version, a.snapshot.version);
    assert_eq!(
        d.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        vec!["default/alice"]
    );
    assert_eq!(
        d.routes.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["default/zz-new"]
    );
    assert!(d.pools.is_empty());
    // The untargeted guardrail covers every route of its namespace: the new one too.
    assert_eq!(
        d.guardrails
            .iter()
            .map(|g| g.id.as_str())
            .collect::<Vec<_>>(),
        vec!["default/pii"]
    );
    assert!(
        d.guardrails[0]
            .routes
            .contains(&"default/zz-new".to_owned())
    );
    let removed: Vec<(&str, &str)> = d
        .removed
        .iter()
        .map(|r| (r.kind.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(removed, vec![("VirtualKey", "bob")]);
    assert_eq!(d.resources.len(), 3);
    // No change: an empty delta, and the same version.
    let same = crate::delta(&b, &compile(&w));
    assert!(same.keys.is_empty() && same.routes.is_empty() && same.removed.is_empty());
    // A generation bump alone changes the version (status reports generations).
    let mut w2 = world("");
    w2.keys[0].metadata.generation = Some(9);
    let c = compile(&w2);
    assert_ne!(c.snapshot.version, a.snapshot.version);
    assert_eq!(crate::delta(&a, &c).resources[0].generation, 9);
}

#[test]
fn a_compiler_reuses_unchanged_keys_and_recompiles_changed_ones() {
    let mut w = world("");
    for (i, k) in w.keys.iter_mut().enumerate() {
        k.metadata.resource_version = Some(format!("rv{i}"));
    }
    let mut compiler = Compiler::default();
    let first = compiler.compile(&w);
    assert_eq!(first.snapshot.version, compile(&w).snapshot.version);
    // Same resourceVersion: the cached form is used (the edit below is invisible on purpose:
    // the API server would have bumped the resourceVersion).
    w.keys[0].spec.disabled = true;
    let cached = compiler.compile(&w);
    assert_eq!(cached.snapshot.version, first.snapshot.version);
    // A new resourceVersion recompiles that key, and gives what a fresh compile gives.
    w.keys[0].metadata.resource_version = Some("rv-new".into());
    let second = compiler.compile(&w);
    assert_ne!(second.snapshot.version, first.snapshot.version);
    assert_eq!(second.snapshot.version, compile(&w).snapshot.version);
    assert_eq!(second.hashes, compile(&w).hashes);
    // So does a new key value in the Secret, with the same resourceVersion.
    let ns = w.secrets.get_mut("default").expect("ns");
    ns.get_mut("keys")
        .expect("secret")
        .insert("alice".into(), "sk-alice-rotated".into());
    let third = compiler.compile(&w);
    assert_eq!(third.snapshot.version, compile(&w).snapshot.version);
    assert_ne!(third.snapshot.version, second.snapshot.version);
}

#[test]
fn resilience_settings_compile_with_defaults_and_are_checked() {
    let c = compile(&world(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: tuned}
spec:
  provider: openai-compatible
  endpoints: [{url: "http://a:8000/v1"}, {url: "http://b:8000/v1"}]
  loadBalancing: LeastLatency
  outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 2s}
  timeouts: {idle: 5s}
  connectionPool: {maxConnections: 64}
  healthCheck: {interval: 5s}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: claude}
spec:
  provider: openai-compatible
  endpoints: [{url: "http://c:8000"}]
  healthCheck: {path: /v1/ping, unhealthyThreshold: 3}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: uncheckable}
spec: {provider: bedrock, bedrock: {region: us-east-1}, endpoints: [{url: "https://b"}], healthCheck: {}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: badpath}
spec: {provider: openai-compatible, endpoints: [{url: "https://o"}], healthCheck: {path: models}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: resilient}
spec:
  models: [resilient]
  loadBalancing: Cost
  backends: [{pool: tuned}]
  retries: {attempts: 3, retryOn: [RateLimited], backoff: 50ms}
  fallbacks:
  - when: [ContextWindowExceeded, RateLimited]
    backends: [{pool: mock}]
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: costly}
spec: {provider: mock, loadBalancing: Cost}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: overejected}
spec: {provider: mock, outlierDetection: {maxEjectedPercent: 101}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: badfallback}
spec:
  models: [badfallback]
  backends: [{pool: mock}]
  fallbacks: [{when: [Timeout], backends: [{pool: nowhere}]}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: tooretried}
spec: {models: [tooretried], backends: [{pool: mock}], retries: {attempts: 11}}
"#,
    ));
    let pool = c
        .snapshot
        .pools
        .iter()
        .find(|p| p.id == "default/tuned")
        .expect("pool");
    assert_eq!(pool.load_balancing(), pb::LoadBalancing::LeastLatency);
    let o = pool.outlier_detection.expect("outlier detection");
    assert_eq!((o.consecutive_failures, o.consecutive_rate_limits), (3, 3));
    assert_eq!((o.base_ejection_ms, o.max_ejection_ms), (2000, 300_000));
    assert_eq!(o.max_ejected_percent, 50);
    assert_eq!(pool.timeouts.expect("timeouts").idle_ms, 5000);
    let cp = pool.connection_pool.expect("connection pool");
    assert_eq!(
        (cp.max_connections, cp.max_idle, cp.idle_timeout_ms),
        (64, 256, 90_000)
    );
    let h = pool.health_check.clone().expect("health check");
    assert_eq!(
        (h.path.as_str(), h.interval_ms, h.timeout_ms),
        ("/models", 5000, 2000)
    );
    assert_eq!((h.unhealthy_threshold, h.healthy_threshold), (2, 1));
    let claude = c
        .snapshot
        .pools
        .iter()
        .find(|p| p.id == "default/claude")
        .expect("claude");
    let h = claude.health_check.clone().expect("health check");
    assert_eq!((h.path.as_str(), h.unhealthy_threshold), ("/v1/ping", 3));
    let mock = c
        .snapshot
        .pools
        .iter()
        .find(|p| p.id == "default/mock")
        .expect("mock");
    assert!(mock.health_check.is_none(), "off unless set");
    let route = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.id == "default/resilient")
        .expect("route");
    assert_eq!(route.load_balancing(), pb::LoadBalancing::Cost);
    let r = route.retry.clone().expect("retry");
    assert_eq!((r.attempts, r.backoff_ms, r.max_backoff_ms), (3, 50, 2000));
    assert_eq!(r.retry_on, [pb::FailureClass::RateLimited as i32]);
    assert_eq!(route.fallbacks.len(), 1);
    assert_eq!(route.fallbacks[0].backends[0].pool, "default/mock");
    // Defaults: two attempts on the transient classes.
    let demo = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.id == "default/demo")
        .expect("demo");
    let d = demo.retry.clone().expect("default retry");
    assert_eq!((d.attempts, d.budget_percent), (2, 20));
    assert_eq!(d.retry_on.len(), 4);
    let msg = |name: &str| {
        c.diagnostics
            .iter()
            .find(|d| d.resource.name == name)
            .map(|d| (d.reason, d.message.clone()))
    };
    assert!(msg("costly").is_some_and(|(_, m)| m.contains("Cost balances a route")));
    assert!(msg("overejected").is_some_and(|(_, m)| m.contains("maxEjectedPercent")));
    assert!(msg("uncheckable").is_some_and(|(_, m)| m.contains("healthCheck is not available")));
    assert!(msg("badpath").is_some_and(|(_, m)| m.contains("healthCheck.path")));
    assert_eq!(
        msg("badfallback"),
        Some((
            "PoolNotFound",
            "spec.fallbacks[0].backends[0].pool: ProviderPool default/nowhere does not exist"
                .into()
        ))
    );
    assert!(msg("tooretried").is_some_and(|(_, m)| m.contains("retries.attempts")));
}

#[test]
fn guardrail_targets_resolve_to_routes_and_keys() {
    let c = compile(&world(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: labelled, labels: {tier: gold}}
spec: {models: [labelled], backends: [{pool: mock}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: targeted}
spec:
  targets:
    routes: [demo]
    routeSelector: {matchLabels: {tier: gold}}
    keys: [alice]
    keySelector: {matchLabels: {team: red}}
  pii: {entities: [Email], action: Alert}
  denyWords: [" Falcon "]
  promptInjection: {}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: maskinjection}
spec: {promptInjection: {action: Mask}}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: blankword}
spec: {denyWords: ["  "]}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: hooked}
spec: {webhook: {url: "http://presidio.guard:3000/check", timeout: 250ms, failureMode: Open}}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: hookdefaults}
spec: {webhook: {url: "https://moderation.example/v1"}}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: badhook}
spec: {webhook: {url: "ftp://nope"}}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {name: instanthook}
spec: {webhook: {url: "http://x", timeout: 0s}}
"#,
    ));
    let g = c
        .snapshot
        .guardrails
        .iter()
        .find(|g| g.id == "default/targeted")
        .expect("guardrail");
    assert_eq!(g.routes, ["default/demo", "default/labelled"]);
    assert_eq!(g.keys, ["default/alice"]);
    assert_eq!(g.key_selector.get("team").map(String::as_str), Some("red"));
    assert_eq!(g.pii_action, "Alert");
    assert_eq!(g.deny_words, ["Falcon"]);
    assert_eq!(g.prompt_injection, "Block", "Block by default");
    let msg = |name: &str| diagnostic(&c, name);
    let hook = |id: &str| {
        c.snapshot
            .guardrails
            .iter()
            .find(|g| g.id == id)
            .and_then(|g| g.webhook.clone())
            .expect("webhook")
    };
    let h = hook("default/hooked");
    assert_eq!(
        (h.url.as_str(), h.timeout_ms, h.fail_open),
        ("http://presidio.guard:3000/check", 250, true)
    );
    let h = hook("default/hookdefaults");
    assert_eq!(
        (h.timeout_ms, h.fail_open),
        (1000, false),
        "1s, fail-closed by default"
    );
    assert!(msg("badhook").contains("spec.webhook.url"));
    assert!(msg("instanthook").contains("spec.webhook.timeout"));
    assert!(msg("maskinjection").contains("Block or Alert"));
    assert!(msg("blankword").contains("denyWords[0]"));
}
