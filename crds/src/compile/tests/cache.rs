//! Compiling an LLMRoute's cache policy.

use super::*;

#[test]
fn cache_policies_compile_and_bad_ones_are_refused() {
    let c = compile(&world(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: cached}
spec:
  models: [cached]
  backends: [{pool: mock}]
  cache: {mode: Exact, ttl: 5m, scope: Label, scopeLabel: team, maxTemperature: 0.2, streaming: false}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: defaults}
spec: {models: [defaults], backends: [{pool: mock}], cache: {mode: Exact}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: semantic}
spec:
  models: [semantic]
  backends: [{pool: mock}]
  cache: {mode: Semantic, similarityThreshold: 0.85, text: Conversation, maxEntries: 100}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: loose}
spec: {models: [loose], backends: [{pool: mock}], cache: {mode: Semantic, similarityThreshold: 0}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: none}
spec: {models: [none], backends: [{pool: mock}], cache: {mode: Exact, maxEntries: 0}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: pooled}
spec: {models: [pooled], backends: [{pool: mock}], cache: {mode: Semantic, embedding: {pool: mock, model: text-embedding-3-small}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: nopool}
spec: {models: [nopool], backends: [{pool: mock}], cache: {mode: Semantic, embedding: {pool: gone, model: e}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: nolabel}
spec: {models: [nolabel], backends: [{pool: mock}], cache: {mode: Exact, scope: Label}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: scorching}
spec: {models: [scorching], backends: [{pool: mock}], cache: {mode: Exact, maxTemperature: 3}}
"#,
    ));
    let policy = |id: &str| {
        c.snapshot
            .routes
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.cache.clone())
            .expect("a cache policy")
    };
    let p = policy("default/cached");
    assert_eq!(p.mode(), pb::CacheMode::Exact);
    assert_eq!(p.scope(), pb::CacheScope::Label);
    assert_eq!(
        (
            p.ttl_ms,
            p.scope_label.as_str(),
            p.max_temperature,
            p.skip_streaming
        ),
        (300_000, "team", Some(0.2), true)
    );
    let d = policy("default/defaults");
    assert_eq!(
        (d.ttl_ms, d.scope(), d.max_temperature, d.skip_streaming),
        (3_600_000, pb::CacheScope::Key, None, false),
        "an hour, per key, any temperature, streams too"
    );
    let msg = |name: &str| diagnostic(&c, name);
    let s = policy("default/semantic");
    assert_eq!(
        (s.mode(), s.similarity_threshold, s.text(), s.max_entries),
        (
            pb::CacheMode::Semantic,
            0.85,
            pb::CacheText::Conversation,
            100
        )
    );
    assert_eq!(
        (d.similarity_threshold, d.text(), d.max_entries),
        (0.9, pb::CacheText::LastUserMessage, 0),
        "0.9, the last user message, no count limit"
    );
    assert!(msg("loose").contains("spec.cache.similarityThreshold"));
    let pooled = policy("default/pooled");
    assert_eq!(
        (
            pooled.embedding_pool.as_str(),
            pooled.embedding_model.as_str()
        ),
        ("default/mock", "text-embedding-3-small")
    );
    assert!(msg("nopool").contains("spec.cache.embedding.pool"));
    assert!(msg("none").contains("spec.cache.maxEntries"));
    assert!(msg("nolabel").contains("spec.cache.scopeLabel"));
    assert!(msg("scorching").contains("spec.cache.maxTemperature"));
}
