//! Telemetry end to end, against a real OpenTelemetry Collector (built from Go modules) that
//! writes what it receives as OTLP JSON lines:
//!
//! - a SERVER span per request and a CLIENT span per upstream attempt with the GenAI
//!   attributes, for chat, a stream, embeddings and errors; a client's trace continued through
//!   the gateway to the upstream (the mock records the `traceparent` it got); retries as
//!   sibling CLIENT spans; stage events;
//! - the GenAI metrics over OTLP and on `/metrics`; the access log;
//! - parent-based sampling with a ratio;
//! - OTLP/HTTP, and the collector killed mid-run: 0 failed requests, dropped spans counted,
//!   export resumes;
//! - the control plane's push span and the data plane's apply span, linked.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard_tests::mock::{Faults, MockHandle};
use switchyard_tests::otelcol::{Collector, Span};
use switchyard_tests::procs::{Proc, eventually};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

struct Env {
    collector: Collector,
    mocks: Vec<MockHandle>,
    dp: Proc,
    api: String,
    admin: String,
    access_log: std::path::PathBuf,
}

fn config(urls: &[String]) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData: {{main: {CLIENT_KEY}, upstream: {UPSTREAM_KEY}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: main}}
spec: {{secretRef: {{name: keys, key: main}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: priced}}
spec:
  provider: openai
  endpoints: [{{url: "{u0}/v1", credentialSecretRef: {{name: keys, key: upstream}}}}]
  models:
  - {{name: mock-gpt, inputPricePerMillion: "2.50", outputPricePerMillion: "10"}}
  - {{name: mock-embed, inputPricePerMillion: "0.02"}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: flaky}}
spec:
  provider: openai
  loadBalancing: RoundRobin
  endpoints:
  - {{url: "{u1}/v1", credentialSecretRef: {{name: keys, key: upstream}}}}
  - {{url: "{u2}/v1", credentialSecretRef: {{name: keys, key: upstream}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: traced}}
spec:
  models: [traced]
  backends: [{{pool: priced, model: mock-gpt}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: vectors}}
spec:
  models: [vectors]
  backends: [{{pool: priced, model: mock-embed}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: remembered}}
spec:
  models: [remembered]
  backends: [{{pool: priced, model: mock-gpt}}]
  cache: {{mode: Exact}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: flaky}}
spec:
  models: [flaky]
  backends: [{{pool: flaky, model: mock-gpt}}]
"#,
        u0 = urls[0],
        u1 = urls[1],
        u2 = urls[2],
    )
}

impl Env {
    async fn start(tag: &str, flags: &[&str], http: bool) -> Self {
        let dir = temp_dir(tag);
        let collector = Collector::start(&dir);
        let mut mocks = Vec::new();
        for _ in 0..3 {
            let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
            mocks.push(
                switchyard_tests::mock::spawn(addr, true)
                    .await
                    .expect("mock"),
            );
        }
        let urls: Vec<String> = mocks.iter().map(MockHandle::url).collect();
        let cfg = dir.join("config");
        std::fs::create_dir_all(&cfg).expect("config dir");
        std::fs::write(cfg.join("config.yaml"), config(&urls)).expect("write config");
        let access_log = dir.join("access.jsonl");
        let endpoint = if http {
            collector.http()
        } else {
            collector.grpc()
        };
        let log = access_log.display().to_string();
        let mut args = vec![
            "--otlp-endpoint",
            endpoint.as_str(),
            "--otlp-protocol",
            if http { "http" } else { "grpc" },
            "--otlp-metrics-interval",
            "500ms",
            "--otlp-timeout",
            "1s",
            "--access-log",
            log.as_str(),
            "--node-id",
            "dp-telemetry",
        ];
        args.extend(flags);
        let (dp, api, admin) = start_standalone(&cfg, &args, &dir);
        wait_ready(&admin).await;
        Self {
            collector,
            mocks,
            dp,
            api,
            admin,
            access_log,
        }
    }

    async fn call(&self, path: &str, body: Value, traceparent: Option<&str>) -> (u16, Value) {
        let mut r = client()
            .post(format!("{}{path}", self.api))
            .bearer_auth(CLIENT_KEY)
            .json(&body);
        if let Some(tp) = traceparent {
            r = r
                .header("traceparent", tp)
                .header("tracestate", "vendor=abc");
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Waits for the SERVER span whose request id is `id`… or any SERVER span matching `f`.
    async fn server_span(&self, what: &str, f: impl Fn(&Span) -> bool) -> Span {
        eventually(DEADLINE, what, || async {
            self.collector
                .spans()
                .into_iter()
                .find(|s| s.kind == 2 && f(s))
        })
        .await
    }

    fn children(&self, parent: &Span) -> Vec<Span> {
        let mut c: Vec<Span> = self
            .collector
            .spans()
            .into_iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
            .collect();
        c.sort_by_key(|s| s.attr("switchyard.attempt"));
        c
    }
}

/// A request id no other test uses.
fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn num(s: &Span, key: &str) -> f64 {
    s.attributes
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| {
            panic!(
                "{key} missing or not a number on {}: {:?}",
                s.name, s.attributes
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_make_genai_spans_metrics_and_access_log_lines() {
    let e = Env::start("telemetry", &[], false).await;
    let parent = format!("00-{TRACE}-{PARENT}-01");

    // Chat, continuing the client's trace.
    let (status, body) = e
        .call(
            "/v1/chat/completions",
            json!({"model": "traced", "temperature": 0.2, "max_tokens": 50,
                   "messages": [{"role": "user", "content": "hello there"}]}),
            Some(&parent),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let chat = e
        .server_span("the chat SERVER span", |s| s.trace_id == TRACE)
        .await;
    assert_eq!(
        chat.parent_span_id, PARENT,
        "the client's span is the parent"
    );
    assert_eq!(chat.name, "chat traced");
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "traced"),
        ("switchyard.route", "default/traced"),
    ] {
        assert_eq!(
            chat.attr(k).as_deref(),
            Some(v),
            "{k}: {:?}",
            chat.attributes
        );
    }
    assert_eq!(
        chat.attr("switchyard.cache.result"),
        None,
        "no cache on this route"
    );
    assert_eq!(num(&chat, "gen_ai.request.max_tokens"), 50.0);
    assert!((num(&chat, "gen_ai.request.temperature") - 0.2).abs() < 1e-9);
    assert_eq!(num(&chat, "http.response.status_code"), 200.0);
    let usage_in = num(&chat, "gen_ai.usage.input_tokens");
    assert_eq!(
        usage_in,
        body["usage"]["prompt_tokens"].as_f64().unwrap_or(-1.0)
    );
    assert_eq!(
        num(&chat, "gen_ai.usage.output_tokens"),
        body["usage"]["completion_tokens"].as_f64().unwrap_or(-1.0)
    );
    assert!(num(&chat, "switchyard.cost.usd") > 0.0, "priced model");
    assert_eq!(
        chat.attr("gen_ai.response.id"),
        body["id"].as_str().map(str::to_owned)
    );
    assert_eq!(
        chat.attr("gen_ai.response.model"),
        body["model"].as_str().map(str::to_owned)
    );
    assert_eq!(
        chat.attributes["gen_ai.response.finish_reasons"],
        json!(["stop"])
    );
    let key = chat.attr("switchyard.key.id").unwrap_or_default();
    assert!(
        !key.is_empty() && !key.contains("sk-"),
        "a key id, never the key: {key}"
    );
    let events: Vec<&str> = chat.events.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        events.contains(&"switchyard.auth") && events.contains(&"switchyard.limits"),
        "stage events: {events:?}"
    );
    assert_eq!(
        chat.resource["service.name"],
        json!("switchyard-data-plane")
    );
    assert_eq!(chat.resource["service.instance.id"], json!("dp-telemetry"));

    // Its one CLIENT span, whose context went upstream.
    let attempts = e.children(&chat);
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let c = &attempts[0];
    assert_eq!((c.kind, c.name.as_str()), (3, "chat mock-gpt"));
    assert_eq!(c.attr("gen_ai.request.model").as_deref(), Some("mock-gpt"));
    assert_eq!(
        c.attr("switchyard.backend").as_deref(),
        Some("default/priced#0")
    );
    let sent = e.mocks[0].state.requests();
    let got = sent.last().expect("the upstream got the request");
    assert_eq!(
        got.headers.get("traceparent").map(String::as_str),
        Some(format!("00-{TRACE}-{}-01", c.span_id).as_str()),
        "the upstream continues the trace from the CLIENT span"
    );
    assert_eq!(
        got.headers.get("tracestate").map(String::as_str),
        Some("vendor=abc")
    );

    // A stream: time to first token, usage counted from the stream.
    let resp = client()
        .post(format!("{}/v1/chat/completions", e.api))
        .bearer_auth(CLIENT_KEY)
        .header("x-request-id", "stream-req-1")
        .json(&json!({"model": "traced", "stream": true,
                      "messages": [{"role": "user", "content": "stream please mock.interval_ms=20"}]}))
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap_or_default();
    assert!(text.contains("[DONE]"));
    let stream = e
        .server_span("the stream's SERVER span", |s| {
            s.attr("switchyard.request.id").as_deref() == Some("stream-req-1")
        })
        .await;
    assert_eq!(
        stream.attr("gen_ai.request.stream").as_deref(),
        Some("true")
    );
    assert!(num(&stream, "switchyard.time_to_first_token_s") > 0.0);
    assert!(num(&stream, "gen_ai.usage.output_tokens") > 0.0);

    // A cache hit: the SERVER span says so, and no upstream was asked.
    let hit_id = eventually(DEADLINE, "a cache hit", || async {
        let id = format!("cache-{}", next_id());
        let r = client()
            .post(format!("{}/v1/chat/completions", e.api))
            .bearer_auth(CLIENT_KEY)
            .header("x-request-id", &id)
            .json(&chat_body("remembered", "the same question"))
            .send()
            .await
            .ok()?;
        (r.headers().get("x-switchyard-cache")?.to_str().ok()? == "hit").then_some(id)
    })
    .await;
    let hit = e
        .server_span("the cache hit's SERVER span", |s| {
            s.attr("switchyard.request.id").as_deref() == Some(hit_id.as_str())
        })
        .await;
    assert_eq!(hit.attr("switchyard.cache.result").as_deref(), Some("hit"));
    assert!(hit.events.iter().any(|(n, _)| n == "switchyard.cache"));
    assert!(e.children(&hit).is_empty(), "a hit asks no upstream");
    assert!(
        hit.attr("gen_ai.response.id")
            .is_some_and(|id| !id.is_empty()),
        "a cached answer is read for its span as the client gets it"
    );

    // Embeddings.
    let (status, _) = e
        .call(
            "/v1/embeddings",
            json!({"model": "vectors", "input": "some text"}),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let emb = e
        .server_span("the embeddings SERVER span", |s| {
            s.name == "embeddings vectors"
        })
        .await;
    assert_eq!(
        emb.attr("gen_ai.operation.name").as_deref(),
        Some("embeddings")
    );
    assert!(num(&emb, "gen_ai.usage.input_tokens") > 0.0);
    assert_eq!(e.children(&emb)[0].name, "embeddings mock-embed");

    // An upstream error (not retried): error.type on both spans.
    let (status, _) = e
        .call(
            "/v1/chat/completions",
            chat_body("traced", "mock.status=400 oops"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let err = e
        .server_span("the error's SERVER span", |s| {
            s.attr("http.response.status_code").as_deref() == Some("400")
        })
        .await;
    // The SERVER span says what the client got (as `switchyard_requests_total` labels it),
    // the CLIENT span the upstream failure's class.
    assert_eq!(err.attr("error.type").as_deref(), Some("upstream_status"));
    let attempt = &e.children(&err)[0];
    assert_eq!(attempt.attr("error.type").as_deref(), Some("bad_request"));
    assert_eq!(
        attempt.attr("http.response.status_code").as_deref(),
        Some("400")
    );

    // An unknown model never reaches an upstream: a SERVER span alone.
    let (status, _) = e
        .call("/v1/chat/completions", chat_body("nope", "hi"), None)
        .await;
    assert_eq!(status, 404);
    let missing = e
        .server_span("the 404's SERVER span", |s| {
            s.attr("http.response.status_code").as_deref() == Some("404")
        })
        .await;
    assert!(missing.attr("error.type").is_some());
    assert!(e.children(&missing).is_empty());

    // Retries are sibling CLIENT spans under one SERVER span.
    e.mocks[1].state.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    let mut retried = None;
    for i in 0..4 {
        let id = format!("flaky-{i}");
        let r = client()
            .post(format!("{}/v1/chat/completions", e.api))
            .bearer_auth(CLIENT_KEY)
            .header("x-request-id", &id)
            .json(&chat_body("flaky", "hi"))
            .send()
            .await
            .expect("flaky");
        assert_eq!(r.status(), 200, "the retry lands on the healthy endpoint");
        if r.headers()["x-switchyard-attempts"] == "2" {
            retried = Some(id);
            break;
        }
    }
    let id = retried.expect("one request met the failing endpoint first");
    let server = e
        .server_span("the retried request's SERVER span", |s| {
            s.attr("switchyard.request.id").as_deref() == Some(id.as_str())
        })
        .await;
    let attempts = e.children(&server);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(
        attempts[0].attr("switchyard.backend").as_deref(),
        Some("default/flaky#0")
    );
    assert_eq!(
        attempts[0].attr("http.response.status_code").as_deref(),
        Some("503")
    );
    assert!(attempts[0].attr("error.type").is_some());
    assert_eq!(attempts[0].status_code, 2);
    assert_eq!(
        attempts[1].attr("switchyard.backend").as_deref(),
        Some("default/flaky#1")
    );
    assert!(attempts[1].attr("error.type").is_none());
    assert_eq!(num(&server, "switchyard.attempts"), 2.0);

    // GenAI metrics over OTLP.
    let names = eventually(DEADLINE, "GenAI metrics at the collector", || async {
        let m = e.collector.metrics();
        let names: std::collections::BTreeSet<String> =
            m.iter().map(|(n, _, _)| n.clone()).collect();
        [
            "gen_ai.client.token.usage",
            "gen_ai.server.request.duration",
            "gen_ai.server.time_to_first_token",
            "gen_ai.server.time_per_output_token",
            "switchyard.cost",
        ]
        .iter()
        .all(|n| names.contains(*n))
        .then_some(m)
    })
    .await;
    let types: std::collections::BTreeSet<String> = names
        .iter()
        .filter(|(n, _, _)| n == "gen_ai.client.token.usage")
        .filter_map(|(_, a, _)| a.get("gen_ai.token.type")?.as_str().map(str::to_owned))
        .collect();
    assert_eq!(types, ["input", "output"].map(str::to_owned).into());
    assert!(
        names.iter().any(|(n, a, _)| n == "gen_ai.server.request.duration"
            && a.get("error.type").is_some()),
        "errors carry error.type"
    );

    // The same on /metrics.
    assert!(metric(&e.admin, "gen_ai_client_token_usage_count{").await >= 6.0);
    assert!(metric(&e.admin, "gen_ai_server_time_to_first_token_seconds_count").await >= 1.0);
    assert!(
        metric(
            &e.admin,
            "switchyard_cost_usd_total{route=\"default/traced\",model=\"traced\",key=\"\"}"
        )
        .await
            > 0.0
    );
    assert!(metric(&e.admin, "switchyard_trace_spans_exported_total").await >= 8.0);

    // Both read the same values: the last OTLP export of the token histogram counts what
    // /metrics counts, series by series summed (no request is in flight now).
    let prom = metric(&e.admin, "gen_ai_client_token_usage_count{").await;
    eventually(DEADLINE, "OTLP's token counts equal /metrics'", || async {
        let m = e.collector.metrics();
        let points: Vec<&Value> = m
            .iter()
            .filter(|(n, _, _)| n == "gen_ai.client.token.usage")
            .map(|(_, _, p)| p)
            .collect();
        let time = |p: &Value| p["timeUnixNano"].as_str().unwrap_or("").to_owned();
        let last = points.iter().map(|p| time(p)).max()?;
        let otlp: f64 = points
            .iter()
            .filter(|p| time(p) == last)
            .filter_map(|p| p["count"].as_str()?.parse::<f64>().ok())
            .sum();
        (otlp == prom).then_some(())
    })
    .await;

    // The access log: a line per request, the trace id the client sent, no secret, no prompt.
    let log = eventually(DEADLINE, "the access log's lines", || async {
        let log = std::fs::read_to_string(&e.access_log).unwrap_or_default();
        (log.lines().count() >= 6).then_some(log)
    })
    .await;
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(lines.len() >= 6, "{log}");
    let first = &lines[0];
    assert_eq!(first["trace_id"], json!(TRACE));
    for k in [
        "request_id",
        "key_id",
        "route",
        "model",
        "backend",
        "status",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "duration_ms",
        "cache",
    ] {
        assert!(!first[k].is_null(), "{k} missing: {first}");
    }
    let streamed = lines
        .iter()
        .find(|l| l["request_id"] == json!("stream-req-1"))
        .expect("the stream's line");
    assert!(streamed["ttft_ms"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(
        !log.contains(CLIENT_KEY) && !log.contains("hello there"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_caller_and_the_ratio() {
    let mut e = Env::start("telemetry-sampling", &["--trace-sample-ratio", "0"], false).await;
    // No caller decision: the ratio (0) drops it, but the upstream still gets a context.
    let (status, _) = e
        .call(
            "/v1/chat/completions",
            chat_body("traced", "unsampled"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let sent = e.mocks[0].state.requests();
    let tp = sent[0]
        .headers
        .get("traceparent")
        .cloned()
        .unwrap_or_default();
    assert!(
        tp.starts_with("00-") && tp.ends_with("-00"),
        "not sampled: {tp}"
    );
    // The caller sampled it: recorded whatever the ratio.
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        e.call(
            "/v1/chat/completions",
            chat_body("traced", "x"),
            Some(&sampled)
        )
        .await
        .0,
        200
    );
    e.server_span("the sampled request", |s| s.trace_id == TRACE)
        .await;
    // The caller did not sample it.
    let other = "5bf92f3577b34da6a3ce929d0e0e4736";
    let unsampled = format!("00-{other}-{PARENT}-00");
    assert_eq!(
        e.call(
            "/v1/chat/completions",
            chat_body("traced", "y"),
            Some(&unsampled)
        )
        .await
        .0,
        200
    );
    // Give the exporter time to have sent it, had it been sampled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans = e.collector.spans();
    assert!(
        spans.iter().all(|s| s.trace_id != other),
        "unsampled trace exported"
    );
    assert_eq!(
        spans.iter().filter(|s| s.kind == 2).count(),
        1,
        "only the caller-sampled request"
    );
    let tp = e.mocks[0]
        .state
        .requests()
        .last()
        .and_then(|r| r.headers.get("traceparent").cloned());
    assert!(tp.is_some_and(|t| t.starts_with(&format!("00-{other}-")) && t.ends_with("-00")));

    // At exit the queue is sent: a span recorded just before SIGTERM, well within the
    // exporter's one-second batching, still reaches the collector.
    let last = "4bf92f3577b34da6a3ce929d0e0e4737";
    let sampled = format!("00-{last}-{PARENT}-01");
    let (status, _) = e
        .call(
            "/v1/chat/completions",
            chat_body("traced", "at exit"),
            Some(&sampled),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        e.dp.terminate(Duration::from_secs(10)),
        "the data plane exits"
    );
    e.server_span("the span queued at exit", |s| s.trace_id == last)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_outage_fails_no_request_and_counts_dropped_spans() {
    let mut e = Env::start("telemetry-outage", &["--access-log-prompts"], true).await;
    let (status, _) = e
        .call(
            "/v1/chat/completions",
            chat_body("traced", "before the outage"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    e.server_span("a span over OTLP/HTTP", |_| true).await;

    e.collector.kill();
    let started = std::time::Instant::now();
    let calls = (0..40).map(|i| {
        let api = e.api.clone();
        async move {
            let r = client()
                .post(format!("{api}/v1/chat/completions"))
                .bearer_auth(CLIENT_KEY)
                .json(&chat_body("traced", &format!("during the outage {i}")))
                .send()
                .await;
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests waited for the collector: {:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(30), "dropped spans counted", || async {
        (metric(&e.admin, "switchyard_trace_spans_dropped_total").await >= 40.0).then_some(())
    })
    .await;

    // Back: export resumes.
    e.collector.restart();
    let after = format!("00-{TRACE}-{PARENT}-01");
    let (status, _) = e
        .call(
            "/v1/chat/completions",
            chat_body("traced", "after the outage"),
            Some(&after),
        )
        .await;
    assert_eq!(status, 200);
    eventually(
        Duration::from_secs(30),
        "spans after the outage",
        || async {
            e.collector
                .spans()
                .iter()
                .any(|s| s.trace_id == TRACE)
                .then_some(())
        },
    )
    .await;

    // Opted in: the access log carries the prompt.
    // A line per request (written in batches); opted in, they carry the prompt.
    let log = eventually(DEADLINE, "42 access log lines", || async {
        let log = std::fs::read_to_string(&e.access_log).unwrap_or_default();
        (log.lines().count() == 42).then_some(log)
    })
    .await;
    assert!(log.contains("before the outage"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_push_span_links_to_the_data_planes_apply_span() {
    let dir = temp_dir("telemetry-push");
    let collector = Collector::start(&dir);
    let (_mock, mock_url) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock_url)).expect("write");
    let tls = tls(&dir);
    let (grpc, admin) = (
        switchyard_tests::procs::free_addr(),
        switchyard_tests::procs::free_addr(),
    );
    let mut args = tls.server_args();
    let endpoint = collector.grpc();
    args.extend(
        [
            "--source",
            &format!("dir:{}", cfg.display()),
            "--grpc-listen",
            &grpc.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--poll-interval",
            "100ms",
            "--otlp-endpoint",
            &endpoint,
        ]
        .map(str::to_owned),
    );
    let _cp = Proc::start("switchyard-control-plane", &args, &[], &dir);
    let cert = tls.client_cert(&dir, "dp-1");
    let (_dp, _api, dp_admin) = start_fleet_dp(
        grpc,
        "dp-1",
        &tls.ca,
        Credential::Cert(&cert),
        &["--otlp-endpoint", &endpoint],
        &dir,
    );
    wait_ready(&dp_admin).await;
    let (push, apply) = first_push_and_apply(&collector).await;
    assert_eq!(
        push.resource["service.name"],
        json!("switchyard-control-plane")
    );
    assert_eq!(
        push.attr("switchyard.config.version"),
        apply.attr("switchyard.config.version")
    );
    assert!(num(&push, "switchyard.config.routes") >= 1.0);
    assert!(num(&push, "switchyard.config.keys") >= 1.0);
    assert_eq!(
        apply.links,
        vec![(push.trace_id.clone(), push.span_id.clone())]
    );
    assert_eq!(
        apply.attr("switchyard.config.result").as_deref(),
        Some("ack")
    );

    // A change: a new version, pushed to one data plane that ACKs it.
    std::fs::write(
        cfg.join("more.yaml"),
        "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: extra}\nspec:\n  models: [extra]\n  backends: [{pool: builtin}]\n",
    )
    .expect("write");
    let first = push.attr("switchyard.config.version");
    let push2 = eventually(DEADLINE, "the second push span", || async {
        collector.spans().into_iter().find(|s| {
            s.name == "switchyard.config.push" && s.attr("switchyard.config.version") != first
        })
    })
    .await;
    assert_eq!(num(&push2, "switchyard.config.data_planes"), 1.0);
    assert_eq!(num(&push2, "switchyard.config.acked"), 1.0);
    assert_eq!(num(&push2, "switchyard.config.nacked"), 0.0);
}

async fn first_push_and_apply(c: &Collector) -> (Span, Span) {
    eventually(DEADLINE, "push and apply spans", || async {
        let spans = c.spans();
        let apply = spans.iter().find(|s| s.name == "switchyard.config.apply")?;
        let push = spans.iter().find(|s| {
            s.name == "switchyard.config.push"
                && s.attr("switchyard.config.version") == apply.attr("switchyard.config.version")
        })?;
        Some((push.clone(), apply.clone()))
    })
    .await
}
