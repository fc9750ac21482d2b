//! The response cache end to end: two data planes share a real Redis 8 and the mock upstream.
//!
//! - Exact: a hit (whole, replayed as a stream, through the other proxy, in each front door's
//!   own entries), key scope keeping tenants apart, label scope sharing a team's answers,
//!   `no-cache` and `no-store`, temperature, TTL expiry, purge, and Redis killed.
//! - Semantic (the built-in model, vector sets in Redis): a paraphrase filled through one
//!   proxy hits through the other, a different question misses, 0 hits across tenants, TTL,
//!   `no-cache`/`no-store`, the entry bound per scope, Redis killed; without Redis, the
//!   in-memory HNSW index; and the model's vectors against sentence-transformers' own.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard_tests::procs::Proc;
use switchyard_tests::redis::{RedisCluster, RedisServer};

const OTHER_KEY: &str = "sk-cache-other-tenant-01";
const RED_1: &str = "sk-cache-team-red-0001";
const RED_2: &str = "sk-cache-team-red-0002";

fn config(mock: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: cache-keys}}
stringData: {{other: {OTHER_KEY}, red1: {RED_1}, red2: {RED_2}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: other}}
spec: {{secretRef: {{name: cache-keys, key: other}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: red1, labels: {{team: red}}}}
spec: {{secretRef: {{name: cache-keys, key: red1}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: red2, labels: {{team: red}}}}
spec: {{secretRef: {{name: cache-keys, key: red2}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: priced}}
spec:
  provider: openai
  endpoints: [{{url: "{mock}/v1", credentialSecretRef: {{name: upstream-cred, key: api-key}}}}]
  models: [{{name: mock-gpt, inputPricePerMillion: "2.50", outputPricePerMillion: "10"}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: cached}}
spec:
  models: [cached]
  backends: [{{pool: priced, model: mock-gpt}}]
  cache: {{mode: Exact, ttl: 10m, maxTemperature: 0.5}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: claude-cached}}
spec:
  models: [claude-cached]
  backends: [{{pool: anthropic, model: claude-mock}}]
  cache: {{mode: Exact}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: team}}
spec:
  models: [team]
  backends: [{{pool: openai, model: mock-gpt}}]
  cache: {{mode: Exact, scope: Label, scopeLabel: team}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: brief}}
spec:
  models: [brief]
  backends: [{{pool: openai, model: mock-gpt}}]
  cache: {{mode: Exact, ttl: 1s}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: meaning}}
spec:
  models: [meaning]
  backends: [{{pool: openai, model: mock-gpt}}]
  cache: {{mode: Semantic, ttl: 10m}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: meaning-brief}}
spec:
  models: [meaning-brief]
  backends: [{{pool: openai, model: mock-gpt}}]
  cache: {{mode: Semantic, ttl: 1s}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: meaning-small}}
spec:
  models: [meaning-small]
  backends: [{{pool: openai, model: mock-gpt}}]
  cache: {{mode: Semantic, maxEntries: 2}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: meaning-pooled}}
spec:
  models: [meaning-pooled]
  backends: [{{pool: openai, model: mock-gpt}}]
  cache:
    mode: Semantic
    similarityThreshold: 0.999
    embedding: {{pool: openai, model: mock-embed}}
"#
    )
}

const FRANCE: &str = "What is the capital of France?";
const PARAPHRASE: &str = "Tell me the capital city of France";
const GERMANY: &str = "What is the capital of Germany?";

struct Env {
    _mock: Proc,
    mock: String,
    dps: Vec<(Proc, String, String)>,
    redis: RedisServer,
}

async fn env(tag: &str) -> Env {
    env_with(tag, true).await
}

/// The token changes on the admin port need.
const ADMIN_TOKEN: &str = "admin-token-for-the-cache-tests";

/// Writes the admin token into a file (as a mounted Secret would be) and returns its path.
fn admin_token(dir: &std::path::Path) -> String {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{ADMIN_TOKEN}\n")).expect("token file");
    path.display().to_string()
}

/// Two proxies on Redis 8, or one without Redis.
async fn env_with(tag: &str, with_redis: bool) -> Env {
    let dir = temp_dir(tag);
    let redis = RedisServer::start_redis8(&dir);
    let model = switchyard_tests::assets::embedding_model();
    let model = model.display().to_string();
    let (mock_proc, mock) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock)).expect("write");
    std::fs::write(cfg.join("cache.yaml"), config(&mock)).expect("write");
    let mut dps = Vec::new();
    let url = redis.url();
    let token = admin_token(&dir);
    // The test Redis fsyncs every write, so a read can wait behind a slow disk.
    let shared = ["--redis-url", url.as_str(), "--redis-timeout", "1s"];
    for _ in 0..if with_redis { 2 } else { 1 } {
        let mut args = vec![
            "--embedding-model",
            model.as_str(),
            "--admin-token-file",
            token.as_str(),
        ];
        if with_redis {
            args.extend(shared);
        }
        let dp = start_standalone(&cfg, &args, &dir);
        wait_ready(&dp.2).await;
        dps.push(dp);
    }
    wait_up(&format!("{mock}/_mock/requests")).await;
    Env {
        _mock: mock_proc,
        mock,
        dps,
        redis,
    }
}

impl Env {
    fn api(&self, i: usize) -> String {
        format!("{}/v1/chat/completions", self.dps[i].1)
    }

    async fn upstream_calls(&self) -> usize {
        mock_requests(&self.mock).await.len()
    }

    /// Waits until Redis holds `n` entries of a route (fills are written in the background).
    async fn stored(&self, route: &str, n: usize) {
        let pattern = format!("sy:cache:{{{route}|*}}:e:*");
        switchyard_tests::procs::eventually(DEADLINE, "the fill reached Redis", || async {
            let keys: Vec<String> = self.redis.query(&["KEYS", &pattern]).unwrap_or_default();
            (keys.len() >= n).then_some(())
        })
        .await;
    }
}

fn cold(model: &str, prompt: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]})
}

/// (status, x-switchyard-cache, body).
async fn ask(
    url: &str,
    key: &str,
    body: &Value,
    cache_control: Option<&str>,
) -> (u16, String, Value) {
    let mut req = client().post(url).bearer_auth(key).json(body);
    if let Some(cc) = cache_control {
        req = req.header("cache-control", cc);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-switchyard-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, cache, body)
}

fn sse_text(sse: &str) -> String {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn exact_hits_are_served_whole_streamed_and_across_the_fleet() {
    let e = env("cache-exact").await;
    let body = cold("cached", "What is the capital of France?");
    let calls = e.upstream_calls().await;
    let (s, c, first) = ask(&e.api(0), CLIENT_KEY, &body, None).await;
    assert_eq!((s, c.as_str()), (200, "miss"), "{first}");
    assert_eq!(e.upstream_calls().await, calls + 1);

    // The same request (keys reordered, whitespace aside): a hit, the same answer, no call.
    let reordered = json!({"messages": [{"content": "What is the capital of France?", "role": "user"}], "temperature": 0, "model": "cached", "user": "someone"});
    let (s, c, hit) = ask(&e.api(0), CLIENT_KEY, &reordered, None).await;
    assert_eq!((s, c.as_str()), (200, "hit"));
    assert_eq!(hit, first, "the stored answer");
    // Through the other proxy: from Redis.
    e.stored("default/cached", 1).await;
    let (s, c, hit) = ask(&e.api(1), CLIENT_KEY, &body, None).await;
    assert_eq!((s, c.as_str()), (200, "hit"));
    assert_eq!(hit, first);
    // Streamed: replayed as a stream, with usage.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let resp = client()
        .post(e.api(1))
        .bearer_auth(CLIENT_KEY)
        .json(&streamed)
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.headers()["x-switchyard-cache"], "hit");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let sse = resp.text().await.expect("sse");
    assert_eq!(
        sse_text(&sse),
        first["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("?"),
        "{sse}"
    );
    assert!(
        sse.contains(&format!(
            "\"completion_tokens\":{}",
            first["usage"]["completion_tokens"]
        )),
        "{sse}"
    );
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
    assert_eq!(
        e.upstream_calls().await,
        calls + 1,
        "every hit spent nothing upstream"
    );

    // A streamed miss is stored once it completed; the whole request then hits it.
    let mut first_streamed = cold("cached", "streamed before anyone asked whole");
    first_streamed["stream"] = json!(true);
    first_streamed["stream_options"] = json!({"include_usage": true});
    let resp = client()
        .post(e.api(0))
        .bearer_auth(CLIENT_KEY)
        .json(&first_streamed)
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.headers()["x-switchyard-cache"], "miss");
    let streamed_text = sse_text(&resp.text().await.expect("sse"));
    assert!(!streamed_text.is_empty());
    e.stored("default/cached", 2).await;
    let (s, c, whole) = ask(
        &e.api(1),
        CLIENT_KEY,
        &cold("cached", "streamed before anyone asked whole"),
        None,
    )
    .await;
    assert_eq!((s, c.as_str()), (200, "hit"), "{whole}");
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str(),
        Some(streamed_text.as_str())
    );
    assert!(
        whole["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{whole}"
    );

    // Another tenant (key scope): never the first key's answer.
    let (s, c, _) = ask(&e.api(0), OTHER_KEY, &body, None).await;
    assert_eq!((s, c.as_str()), (200, "miss"));
    // A different question misses.
    let (_, c, _) = ask(
        &e.api(0),
        CLIENT_KEY,
        &cold("cached", "What is the capital of Spain?"),
        None,
    )
    .await;
    assert_eq!(c, "miss");
    // Label scope: two keys of team red share.
    let team = cold("team", "shared team question");
    assert_eq!(ask(&e.api(0), RED_1, &team, None).await.1, "miss");
    e.stored("default/team", 1).await;
    assert_eq!(ask(&e.api(1), RED_2, &team, None).await.1, "hit");
    assert_eq!(
        ask(&e.api(0), CLIENT_KEY, &team, None).await.1,
        "bypass",
        "no team label"
    );

    // cache-control: no-cache skips the lookup (and refreshes), no-store skips the fill.
    let before = e.upstream_calls().await;
    let (_, c, _) = ask(&e.api(0), CLIENT_KEY, &body, Some("no-cache")).await;
    assert_eq!(c, "bypass");
    assert_eq!(e.upstream_calls().await, before + 1);
    let fresh = cold("cached", "never stored");
    let (s, c, b) = ask(&e.api(0), CLIENT_KEY, &fresh, Some("no-store")).await;
    assert_eq!(
        (s, c.as_str()),
        (200, "miss"),
        "{b} (cache errors so far: {})",
        metric(&e.dps[0].2, "switchyard_cache_errors_total").await
    );
    assert_eq!(
        ask(&e.api(0), CLIENT_KEY, &fresh, None).await.1,
        "miss",
        "no-store stored nothing"
    );
    assert_eq!(ask(&e.api(0), CLIENT_KEY, &fresh, None).await.1, "hit");
    // Above the route's temperature limit (or without one: 1): not cached.
    let hot = json!({"model": "cached", "temperature": 0.9, "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    assert_eq!(ask(&e.api(0), CLIENT_KEY, &hot, None).await.1, "bypass");

    // Each front door has its own entries: Anthropic Messages, whole then streamed.
    let messages = format!("{}/v1/messages", e.dps[0].1);
    let m = json!({"model": "claude-cached", "max_tokens": 50, "messages": [{"role": "user", "content": "hello claude"}]});
    let send = |stream: bool| {
        let mut b = m.clone();
        b["stream"] = json!(stream);
        client()
            .post(&messages)
            .header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&b)
            .send()
    };
    let r = send(false).await.expect("messages");
    assert_eq!(r.headers()["x-switchyard-cache"], "miss");
    let whole: Value = r.json().await.expect("json");
    let r = send(true).await.expect("messages");
    assert_eq!(r.headers()["x-switchyard-cache"], "hit");
    let sse = r.text().await.expect("sse");
    assert!(
        sse.contains("event: message_start") && sse.contains("event: message_stop"),
        "{sse}"
    );
    let text: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, whole["content"][0]["text"].as_str().unwrap_or("?"));

    // TTL: the 1 s route's entry is gone after a second, in memory and in Redis.
    let brief = cold("brief", "short-lived");
    assert_eq!(ask(&e.api(0), CLIENT_KEY, &brief, None).await.1, "miss");
    assert_eq!(ask(&e.api(0), CLIENT_KEY, &brief, None).await.1, "hit");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(ask(&e.api(0), CLIENT_KEY, &brief, None).await.1, "miss");
    e.stored("default/brief", 1).await;
    assert_eq!(
        ask(&e.api(1), CLIENT_KEY, &brief, None).await.1,
        "hit",
        "refilled"
    );

    // Purge a route on the admin port: this proxy's memory and Redis. A change needs the
    // admin token.
    let purge = format!("{}/cache?route=default/cached", e.dps[0].2);
    let refused = client().delete(&purge).send().await.expect("purge");
    assert_eq!(refused.status(), 401, "no token, no change");
    let refused = client()
        .delete(&purge)
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .expect("purge");
    assert_eq!(refused.status(), 401, "a wrong token, no change");
    assert_eq!(
        ask(&e.api(0), CLIENT_KEY, &body, None).await.1,
        "hit",
        "nothing was purged"
    );
    let purged = client()
        .delete(&purge)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("purge");
    assert_eq!(purged.status(), 200);
    assert_eq!(ask(&e.api(0), CLIENT_KEY, &body, None).await.1, "miss");

    // Metrics: hits and the tokens they saved.
    let admin = &e.dps[0].2;
    assert!(
        metric(
            admin,
            "switchyard_cache_lookups_total{route=\"default/cached\",result=\"hit\"}"
        )
        .await
            >= 2.0
    );
    assert!(metric(admin, "switchyard_cache_tokens_saved_total").await > 0.0);
    assert!(
        metric(admin, "switchyard_cache_cost_saved_usd_total").await > 0.0,
        "hits on a priced model save money"
    );
    let _ = &e.redis;
}

/// A stampede of identical requests on a cached route costs one upstream call: the first to
/// miss goes upstream, the others wait for its answer to be stored and are served it as hits.
/// Another key's identical request (the route's cache is scoped by key) is not held for it:
/// it makes its own call.
#[tokio::test]
async fn a_stampede_of_identical_requests_makes_one_upstream_call() {
    let e = env("cache-stampede").await;
    // The upstream takes a while, so every request arrives while the first is in flight.
    let body = cold("cached", "A slow question mock.latency_ms=800");
    let calls = e.upstream_calls().await;
    let coalesced_before = metric(&e.dps[0].2, "switchyard_cache_coalesced_total").await;
    let api = e.api(0);
    let ours = (0..100).map(|_| ask(&api, CLIENT_KEY, &body, None));
    let theirs = (0..10).map(|_| ask(&api, OTHER_KEY, &body, None));
    let (ours, theirs) = tokio::join!(
        futures_util::future::join_all(ours),
        futures_util::future::join_all(theirs)
    );
    assert_eq!(
        e.upstream_calls().await,
        calls + 2,
        "one call per key scope, whatever the number of requests"
    );
    for answers in [&ours, &theirs] {
        let first = &answers[0].2;
        assert!(
            answers.iter().all(|(s, _, b)| *s == 200 && b == first),
            "every request gets the one answer"
        );
        let misses = answers.iter().filter(|(_, c, _)| c == "miss").count();
        let hits = answers.iter().filter(|(_, c, _)| c == "hit").count();
        assert_eq!((misses, hits), (1, answers.len() - 1));
    }
    let coalesced = metric(&e.dps[0].2, "switchyard_cache_coalesced_total").await;
    assert_eq!(coalesced - coalesced_before, 108.0, "99 and 9 waited");
}

#[tokio::test]
async fn a_redis_outage_bypasses_the_cache_without_errors() {
    let mut e = env("cache-outage").await;
    let body = cold("cached", "asked before the outage");
    assert_eq!(ask(&e.api(0), CLIENT_KEY, &body, None).await.1, "miss");
    e.redis.kill();
    // This proxy still has it in memory; the other asks Redis, which is gone: served anyway.
    assert_eq!(ask(&e.api(0), CLIENT_KEY, &body, None).await.1, "hit");
    let started = std::time::Instant::now();
    let (s, c, b) = ask(&e.api(1), CLIENT_KEY, &body, None).await;
    assert_eq!((s, c.as_str()), (200, "bypass"), "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (s, c, _) = ask(
        &e.api(1),
        CLIENT_KEY,
        &cold("cached", "during the outage"),
        None,
    )
    .await;
    assert_eq!((s, c.as_str()), (200, "bypass"));
    assert!(metric(&e.dps[1].2, "switchyard_cache_errors_total").await >= 2.0);
}

/// The similarity a `semantic-hit; similarity=0.923` header gives.
fn similarity(header: &str) -> Option<f32> {
    header
        .strip_prefix("semantic-hit; similarity=")
        .and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn paraphrases_hit_across_the_fleet_and_never_across_tenants() {
    let e = env("cache-semantic").await;
    let calls = e.upstream_calls().await;
    let (s, c, first) = ask(&e.api(0), CLIENT_KEY, &cold("meaning", FRANCE), None).await;
    assert_eq!((s, c.as_str()), (200, "miss"), "{first}");
    e.stored("default/meaning", 1).await;

    // Another wording, through the other proxy: the stored answer, nothing spent upstream.
    let (s, c, hit) = ask(&e.api(1), CLIENT_KEY, &cold("meaning", PARAPHRASE), None).await;
    assert_eq!(s, 200);
    let sim = similarity(&c).unwrap_or_else(|| panic!("not a semantic hit: {c:?}"));
    assert!((0.9..1.0).contains(&sim), "{sim}");
    assert_eq!(hit, first, "the stored answer");
    assert_eq!(e.upstream_calls().await, calls + 1);
    // A different question misses, though it is worded alike.
    let (_, c, _) = ask(&e.api(1), CLIENT_KEY, &cold("meaning", GERMANY), None).await;
    assert_eq!(c, "miss");
    // Another tenant (key scope): neither the question nor its paraphrase hits.
    assert_eq!(
        ask(&e.api(0), OTHER_KEY, &cold("meaning", PARAPHRASE), None)
            .await
            .1,
        "miss"
    );
    // Other parameters must match exactly: another temperature is another set.
    let warmer = json!({"model": "meaning", "temperature": 0.2, "messages": [{"role": "user", "content": PARAPHRASE}]});
    assert_eq!(ask(&e.api(0), CLIENT_KEY, &warmer, None).await.1, "miss");
    // Streamed: the paraphrase's answer replayed as a stream.
    let mut streamed = cold("meaning", "Which city is the capital of France?");
    streamed["stream"] = json!(true);
    let resp = client()
        .post(e.api(0))
        .bearer_auth(CLIENT_KEY)
        .json(&streamed)
        .send()
        .await
        .expect("stream");
    let c = resp.headers()["x-switchyard-cache"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(similarity(&c).is_some(), "{c}");
    let sse = resp.text().await.expect("sse");
    assert_eq!(
        sse_text(&sse),
        first["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("?")
    );

    // no-cache: no lookup; no-store: nothing stored for a paraphrase to find.
    assert_eq!(
        ask(
            &e.api(0),
            CLIENT_KEY,
            &cold("meaning", PARAPHRASE),
            Some("no-cache")
        )
        .await
        .1,
        "bypass"
    );
    let (_, c, _) = ask(
        &e.api(0),
        CLIENT_KEY,
        &cold("meaning", "How tall is the Eiffel Tower?"),
        Some("no-store"),
    )
    .await;
    assert_eq!(c, "miss");
    assert_eq!(
        ask(
            &e.api(1),
            CLIENT_KEY,
            &cold("meaning", "What is the height of the Eiffel Tower?"),
            None
        )
        .await
        .1,
        "miss",
        "no-store stored nothing"
    );

    // TTL: a 1 s route's paraphrase hits at once and misses after it.
    let brief = |p: &str| cold("meaning-brief", p);
    assert_eq!(
        ask(&e.api(0), CLIENT_KEY, &brief(FRANCE), None).await.1,
        "miss"
    );
    e.stored("default/meaning-brief", 1).await;
    let c = ask(&e.api(1), CLIENT_KEY, &brief(PARAPHRASE), None).await.1;
    assert!(similarity(&c).is_some(), "{c}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        ask(&e.api(1), CLIENT_KEY, &brief(PARAPHRASE), None).await.1,
        "miss"
    );

    // At most two answers per scope: the oldest goes, from Redis and its vector set.
    let small = |p: &str| cold("meaning-small", p);
    for q in [
        FRANCE,
        "How do I bake bread?",
        "What is the speed of light?",
    ] {
        assert_eq!(ask(&e.api(0), CLIENT_KEY, &small(q), None).await.1, "miss");
    }
    e.stored("default/meaning-small", 2).await;
    switchyard_tests::procs::eventually(DEADLINE, "the oldest answer dropped", || async {
        let keys: Vec<String> = e
            .redis
            .query(&["KEYS", "sy:cache:{default/meaning-small|*}:e:*"])
            .unwrap_or_default();
        (keys.len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        ask(&e.api(1), CLIENT_KEY, &small(PARAPHRASE), None).await.1,
        "miss",
        "the first answer was dropped"
    );
    let c = ask(
        &e.api(1),
        CLIENT_KEY,
        &small("What's the speed of light?"),
        None,
    )
    .await
    .1;
    assert!(similarity(&c).is_some(), "{c}");

    // Metrics: semantic hits, the similarity histogram, embedding time and bytes.
    let admin = &e.dps[1].2;
    assert!(
        metric(
            admin,
            "switchyard_cache_lookups_total{route=\"default/meaning\",result=\"semantic_hit\"}"
        )
        .await
            >= 1.0
    );
    assert!(metric(admin, "switchyard_cache_similarity_count").await >= 3.0);
    assert!(metric(admin, "switchyard_cache_embedding_duration_seconds_count").await >= 3.0);
    assert!(metric(admin, "switchyard_cache_embedded_bytes_total").await > 50.0);
}

#[tokio::test]
async fn a_redis_outage_bypasses_the_semantic_cache_without_errors() {
    let mut e = env("cache-semantic-outage").await;
    assert_eq!(
        ask(&e.api(0), CLIENT_KEY, &cold("meaning", FRANCE), None)
            .await
            .1,
        "miss"
    );
    e.redis.kill();
    let started = std::time::Instant::now();
    let (s, c, b) = ask(&e.api(1), CLIENT_KEY, &cold("meaning", PARAPHRASE), None).await;
    assert_eq!((s, c.as_str()), (200, "bypass"), "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(metric(&e.dps[1].2, "switchyard_cache_errors_total{op=\"get\"}").await >= 1.0);
}

#[tokio::test]
async fn without_redis_paraphrases_hit_in_the_proxys_own_index() {
    let e = env_with("cache-semantic-memory", false).await;
    let (_, c, first) = ask(&e.api(0), CLIENT_KEY, &cold("meaning", FRANCE), None).await;
    assert_eq!(c, "miss");
    // The fill (and its vector) is stored right after the answer went out.
    let (s, c, hit) = switchyard_tests::procs::eventually(DEADLINE, "a semantic hit", || async {
        let r = ask(&e.api(0), CLIENT_KEY, &cold("meaning", PARAPHRASE), None).await;
        similarity(&r.1).is_some().then_some(r)
    })
    .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(hit, first);
    assert_eq!(
        ask(&e.api(0), CLIENT_KEY, &cold("meaning", GERMANY), None)
            .await
            .1,
        "miss"
    );
    assert_eq!(
        ask(&e.api(0), OTHER_KEY, &cold("meaning", PARAPHRASE), None)
            .await
            .1,
        "miss",
        "another tenant"
    );
    assert_eq!(e.redis.dbsize(), 0, "nothing went to Redis");
}

#[test]
fn the_embedding_model_matches_sentence_transformers() {
    use switchyard_data_plane::cache::embed::{Model, cosine};
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(
            switchyard_tests::procs::workspace_root().join("tests/fixtures/minilm-reference.json"),
        )
        .expect("fixture"),
    )
    .expect("json");
    let model = Model::load(&switchyard_tests::assets::embedding_model()).expect("model");
    assert_eq!(model.dimensions(), 384);
    let sentences = fixture["sentences"].as_array().expect("sentences");
    assert_eq!(sentences.len(), 3);
    for s in sentences {
        let text = s["text"].as_str().expect("text");
        let want: Vec<f32> = s["vector"]
            .as_array()
            .expect("vector")
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
            .collect();
        let got = model.embed_now(text).expect("embedding");
        assert_eq!(got.len(), want.len());
        let sim = cosine(&got, &want);
        assert!(
            sim >= 0.99,
            "{text:?}: cosine {sim} against sentence-transformers"
        );
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
    }
}

#[tokio::test]
async fn the_fleet_shares_answers_and_vectors_through_a_redis_cluster() {
    let dir = temp_dir("cache-cluster");
    let cluster = RedisCluster::start_redis8(&dir);
    let (_mock, mock) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock)).expect("write");
    std::fs::write(cfg.join("cache.yaml"), config(&mock)).expect("write");
    let model = switchyard_tests::assets::embedding_model();
    let seeds = cluster.seeds();
    let token = admin_token(&dir);
    let dps: Vec<_> = (0..2)
        .map(|_| {
            start_standalone(
                &cfg,
                &[
                    "--redis-url",
                    &seeds,
                    "--redis-cluster",
                    "--redis-timeout",
                    "1s",
                    "--embedding-model",
                    &model.display().to_string(),
                    "--admin-token-file",
                    &token,
                ],
                &dir,
            )
        })
        .collect();
    for dp in &dps {
        wait_ready(&dp.2).await;
    }
    let api = |i: usize| format!("{}/v1/chat/completions", dps[i].1);
    let keys = |pattern: &str| -> usize {
        cluster
            .nodes
            .iter()
            .map(|n| {
                n.query::<Vec<String>>(&["KEYS", pattern])
                    .unwrap_or_default()
                    .len()
            })
            .sum()
    };
    // Exact: filled through one proxy, a hit through the other.
    let body = cold("cached", "asked through the cluster");
    assert_eq!(ask(&api(0), CLIENT_KEY, &body, None).await.1, "miss");
    switchyard_tests::procs::eventually(DEADLINE, "the fill reached the cluster", || async {
        (keys("sy:cache:{default/cached|*}:e:*") == 1).then_some(())
    })
    .await;
    assert_eq!(ask(&api(1), CLIENT_KEY, &body, None).await.1, "hit");
    // Semantic: the vector set lives beside the answer, in the scope's slot.
    assert_eq!(
        ask(&api(0), CLIENT_KEY, &cold("meaning", FRANCE), None)
            .await
            .1,
        "miss"
    );
    switchyard_tests::procs::eventually(DEADLINE, "the vector reached the cluster", || async {
        (keys("sy:cache:{default/meaning|*}:v:*") == 1).then_some(())
    })
    .await;
    let c = ask(&api(1), CLIENT_KEY, &cold("meaning", PARAPHRASE), None)
        .await
        .1;
    assert!(similarity(&c).is_some(), "{c}");
    // Purge reaches every node.
    for route in ["default/cached", "default/meaning"] {
        let r = client()
            .delete(format!("{}/cache?route={route}", dps[1].2))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("purge");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(keys("sy:cache:*"), 0, "nothing left on any node");
    assert_eq!(ask(&api(1), CLIENT_KEY, &body, None).await.1, "miss");
    assert_eq!(
        metric(&dps[0].2, "switchyard_cache_errors_total").await,
        0.0,
        "no cluster call failed"
    );
}

#[tokio::test]
async fn a_pool_can_make_the_embeddings() {
    let e = env("cache-semantic-pool").await;
    let pooled = |p: &str| cold("meaning-pooled", p);
    assert_eq!(
        ask(&e.api(0), CLIENT_KEY, &pooled(FRANCE), None).await.1,
        "miss"
    );
    e.stored("default/meaning-pooled", 1).await;
    // The mock's embeddings depend only on the text's length: a question about Spain of the
    // same length is the same vector there (the built-in model would never call it a match
    // at 0.999), one of another length is not.
    let spain = "Which is the capital of Spain?";
    assert_eq!(spain.len(), FRANCE.len());
    let c = ask(&e.api(1), CLIENT_KEY, &pooled(spain), None).await.1;
    assert_eq!(similarity(&c), Some(1.0), "{c}");
    assert_eq!(
        ask(&e.api(1), CLIENT_KEY, &pooled("Hello there"), None)
            .await
            .1,
        "miss"
    );
    let asked: Vec<Value> = mock_requests(&e.mock)
        .await
        .into_iter()
        .filter(|r| r["path"] == "/v1/embeddings")
        .collect();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|r| r["body"]["model"] == "mock-embed" && r["body"]["input"].is_string()),
        "{asked:?}"
    );
    assert_eq!(asked[1]["body"]["input"], spain);
    // no-cache refreshes the answer; the fill must not embed with the built-in model (its
    // 384 dimensions would not fit this set's vectors: Redis would refuse the fill).
    let (_, c, _) = ask(&e.api(0), CLIENT_KEY, &pooled(FRANCE), Some("no-cache")).await;
    assert_eq!(c, "bypass");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        metric(&e.dps[0].2, "switchyard_cache_errors_total").await,
        0.0,
        "every fill stored"
    );
}
