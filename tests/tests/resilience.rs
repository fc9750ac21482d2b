//! Fault injection: a standalone data plane in front of several mock upstream endpoints over
//! real HTTP, each told to fail, slow down or rate-limit (`PUT /_mock/faults`). Balancing,
//! outlier ejection and return, retries within their budget, fallback groups, timeouts and
//! cancellation, as clients see them and as the endpoints count them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use switchyard_tests::mock::{Faults, MockHandle};
use switchyard_tests::procs::{Proc, eventually};

/// Mock endpoints in this process, and a data plane in front of them.
struct Env {
    mocks: Vec<MockHandle>,
    dp: Proc,
    api: String,
    admin: String,
}

impl Env {
    /// `config` gets the mocks' URLs and returns the resources (the client key is added).
    async fn start(endpoints: usize, config: impl FnOnce(&[String]) -> String) -> Self {
        Self::start_with(&[], endpoints, config).await
    }

    /// The same, with extra data-plane flags.
    async fn start_with(
        flags: &[&str],
        endpoints: usize,
        config: impl FnOnce(&[String]) -> String,
    ) -> Self {
        let dir = temp_dir("resilience");
        let mut mocks = Vec::new();
        for _ in 0..endpoints {
            let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
            mocks.push(
                switchyard_tests::mock::spawn(addr, false)
                    .await
                    .expect("mock"),
            );
        }
        let urls: Vec<String> = mocks.iter().map(MockHandle::url).collect();
        let cfg_dir = dir.join("config");
        std::fs::create_dir_all(&cfg_dir).expect("config dir");
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: keys}}\nstringData: {{main: {CLIENT_KEY}}}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: VirtualKey\nmetadata: {{name: main}}\nspec: {{secretRef: {{name: keys, key: main}}}}\n---\n{}",
            config(&urls)
        );
        std::fs::write(cfg_dir.join("config.yaml"), yaml).expect("write config");
        let (dp, api, admin) = start_standalone(&cfg_dir, flags, &dir);
        wait_ready(&admin).await;
        Self {
            mocks,
            dp,
            api,
            admin,
        }
    }

    fn fault(&self, i: usize, f: Faults) {
        self.mocks[i].state.set_faults(f);
    }

    fn calls(&self, i: usize) -> u64 {
        self.mocks[i].state.call_count()
    }

    async fn chat(&self, model: &str, prompt: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        post(
            &format!("{}/v1/chat/completions", self.api),
            Some(CLIENT_KEY),
            &chat_body(model, prompt),
        )
        .await
    }

    async fn metric(&self, name: &str) -> f64 {
        metric(&self.admin, name).await
    }
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// An OpenAI-compatible pool over `urls`, with extra spec lines.
fn pool(name: &str, urls: &[&String], spec: &str) -> String {
    let endpoints: Vec<String> = urls
        .iter()
        .map(|u| format!("{{url: \"{u}/v1\"}}"))
        .collect();
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: ProviderPool\nmetadata: {{name: {name}}}\nspec:\n  provider: openai-compatible\n  endpoints: [{}]\n{spec}\n---\n",
        endpoints.join(", ")
    )
}

fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: {name}}}\nspec:\n  models: [{name}]\n{spec}\n---\n"
    )
}

fn failing(status: u16) -> Faults {
    Faults {
        status: Some(status),
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_are_ejected_without_client_errors_and_return_after_a_probe() {
    let e = Env::start(4, |u| {
        let outlier = "  loadBalancing: RoundRobin\n  outlierDetection: {consecutiveFailures: 2, consecutiveRateLimits: 2, baseEjectionTime: 1s}";
        [
            pool("errors", &[&u[0], &u[1]], outlier),
            route("errors", "  backends: [{pool: errors}]"),
            pool("limited", &[&u[2], &u[3]], outlier),
            route("limited", "  backends: [{pool: limited}]"),
        ]
        .concat()
    })
    .await;
    e.fault(1, failing(500));
    e.fault(
        3,
        Faults {
            status: Some(429),
            retry_after: Some("1".into()),
            ..Faults::default()
        },
    );
    for model in ["errors", "limited"] {
        let mut retried = 0;
        for i in 0..30 {
            let (s, h, b) = e.chat(model, "hi").await;
            assert_eq!(s, 200, "{model} request {i}: {b}");
            assert_eq!(
                header(&h, "x-switchyard-backend"),
                format!("default/{model}#0")
            );
            retried += usize::from(header(&h, "x-switchyard-attempts") == "2");
        }
        // Two failures in a row eject the endpoint; each was retried on the healthy one.
        assert_eq!(retried, 2, "{model}");
    }
    assert_eq!(e.calls(1), 2, "no traffic to the ejected endpoint");
    assert_eq!(e.calls(3), 2, "no traffic to the rate-limited endpoint");
    assert_eq!(
        e.metric("switchyard_endpoint_ejections_total{pool=\"default/errors\",endpoint=\"1\"}")
            .await,
        1.0
    );
    assert_eq!(
        e.metric("switchyard_endpoint_ejections_total{pool=\"default/limited\",endpoint=\"1\"}")
            .await,
        1.0
    );

    // Healthy again: after the ejection time, one probe succeeds and the endpoint returns.
    e.fault(1, Faults::default());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        assert_eq!(e.chat("errors", "hi").await.0, 200);
    }
    assert!(e.calls(1) >= 6, "back in rotation: {}", e.calls(1));
    assert_eq!(
        e.metric("switchyard_endpoint_returns_total{pool=\"default/errors\",endpoint=\"1\"}")
            .await,
        1.0
    );

    // Still failing when the time is up: the probe fails and the ejection doubles (2 s).
    let before = e.calls(3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        assert_eq!(e.chat("limited", "hi").await.0, 200);
    }
    assert_eq!(e.calls(3), before + 1, "exactly one probe");
    assert_eq!(
        e.metric("switchyard_endpoint_ejections_total{pool=\"default/limited\",endpoint=\"1\"}")
            .await,
        2.0
    );
    assert_eq!(
        e.metric("switchyard_backend_requests_total{pool=\"default/errors\",endpoint=\"0\"}")
            .await as u64,
        e.calls(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_latency_avoids_a_slow_endpoint_and_least_request_a_busy_one() {
    let e = Env::start(4, |u| {
        [
            pool("fast", &[&u[0], &u[1]], "  loadBalancing: LeastLatency"),
            route("fast", "  backends: [{pool: fast}]"),
            pool("idle", &[&u[2], &u[3]], "  loadBalancing: LeastRequest"),
            route("idle", "  backends: [{pool: idle}]"),
        ]
        .concat()
    })
    .await;
    e.fault(
        1,
        Faults {
            latency_ms: 150,
            ..Faults::default()
        },
    );
    for _ in 0..40 {
        assert_eq!(e.chat("fast", "hi").await.0, 200);
    }
    // The slow one is measured once, then avoided (round robin would send it 20).
    assert!(e.calls(1) <= 2, "slow endpoint got {} of 40", e.calls(1));
    // Keep-alive: sequential requests reuse one pooled connection per endpoint.
    let opened = e
        .metric("switchyard_upstream_connections_opened_total")
        .await;
    assert!(
        (2.0..=4.0).contains(&opened),
        "{opened} connections for 40 requests"
    );
    assert!(e.metric("switchyard_upstream_connections_open ").await >= 2.0);

    // Least request: while one endpoint holds long requests, new ones go to the other.
    e.fault(
        2,
        Faults {
            latency_ms: 1500,
            ..Faults::default()
        },
    );
    let held: Vec<_> = (0..4)
        .map(|_| {
            let api = e.api.clone();
            tokio::spawn(async move {
                post(
                    &format!("{api}/v1/chat/completions"),
                    Some(CLIENT_KEY),
                    &chat_body("idle", "hi"),
                )
                .await
                .0
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = e.calls(2);
    assert!(busy >= 1, "some requests are held on the slow endpoint");
    for _ in 0..20 {
        assert_eq!(e.chat("idle", "hi").await.0, 200);
    }
    assert_eq!(e.calls(2), busy, "nothing more went to the busy endpoint");
    for h in held {
        assert_eq!(h.await.expect("join"), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_and_failures_come_back_as_one_error() {
    let e = Env::start(3, |u| {
        let no_ejection = "  outlierDetection: {consecutiveFailures: 0, consecutiveRateLimits: 0}";
        [
            pool("down", &[&u[0]], no_ejection),
            route(
                "down",
                "  backends: [{pool: down}]\n  retries: {attempts: 3, backoff: 1ms, maxBackoff: 2ms, budgetPercent: 20, minRetriesPerSecond: 1}",
            ),
            pool("busy", &[&u[1], &u[2]], no_ejection),
            route("busy", "  backends: [{pool: busy}]"),
        ]
        .concat()
    })
    .await;
    e.fault(0, failing(500));
    let n = 100;
    for _ in 0..n {
        let (s, _, b) = e.chat("down", "hi").await;
        assert_eq!(s, 502, "{b}");
    }
    // Without a budget 300 calls; with it, 100 + 20% + the reserve of 1/s over 10 s.
    let calls = e.calls(0);
    assert!(
        (n + 5..=n + 20 + 10 + 2).contains(&calls),
        "{calls} upstream calls for {n} requests"
    );
    assert!(
        e.metric("switchyard_retries_total{class=\"server_error\",result=\"budget_exhausted\"}")
            .await
            > 0.0
    );

    // Every endpoint rate-limiting: one 429 that lists both attempts, with retry-after.
    for i in [1, 2] {
        e.fault(
            i,
            Faults {
                status: Some(429),
                retry_after: Some("0".into()),
                ..Faults::default()
            },
        );
    }
    let (s, h, b) = e.chat("busy", "hi").await;
    assert_eq!(s, 429, "{b}");
    assert_eq!(b["error"]["code"], "attempts_exhausted");
    assert_eq!(header(&h, "x-switchyard-attempts"), "2");
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("default/busy#0: rate_limited")
            && message.contains("default/busy#1: rate_limited"),
        "both endpoints are named: {message}"
    );
    assert_eq!(header(&h, "retry-after"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_window_error_enters_the_fallback_group() {
    let e = Env::start(2, |u| {
        [
            pool("small", &[&u[0]], ""),
            pool("large", &[&u[1]], ""),
            route(
                "chat",
                "  backends: [{pool: small}]\n  fallbacks:\n  - when: [ContextWindowExceeded]\n    backends: [{pool: large}]",
            ),
            route("nofallback", "  backends: [{pool: small}]"),
        ]
        .concat()
    })
    .await;
    e.fault(
        0,
        Faults {
            context_window: Some(50),
            ..Faults::default()
        },
    );
    let (s, h, _) = e.chat("chat", "short").await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-switchyard-backend"), "default/small#0");
    assert_eq!(header(&h, "x-switchyard-attempts"), "1");

    let long = "word ".repeat(100);
    let (s, h, b) = e.chat("chat", &long).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(header(&h, "x-switchyard-backend"), "default/large#0");
    assert_eq!(header(&h, "x-switchyard-attempts"), "2");
    assert_eq!(
        e.calls(0),
        2,
        "not retried on the small model: it cannot fit"
    );
    assert_eq!(
        e.metric("switchyard_fallbacks_total{class=\"context_window_exceeded\"}")
            .await,
        1.0
    );

    // Without a fallback the client gets the provider's error as it is.
    let (s, h, b) = e.chat("nofallback", &long).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "context_length_exceeded");
    assert_eq!(header(&h, "x-switchyard-attempts"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_and_silent_streams() {
    let e = Env::start(2, |u| {
        [
            pool("slow", &[&u[0]], "  timeouts: {idle: 300ms}"),
            route("slow", "  backends: [{pool: slow}]"),
            pool("broken", &[&u[1]], ""),
            route("broken", "  backends: [{pool: broken}]"),
        ]
        .concat()
    })
    .await;
    // A client that gives up cancels the upstream call at once.
    e.fault(
        0,
        Faults {
            latency_ms: 3000,
            ..Faults::default()
        },
    );
    let gave_up = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client")
        .post(format!("{}/v1/chat/completions", e.api))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body("slow", "hi"))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    eventually(
        Duration::from_secs(2),
        "the upstream call cancelled",
        || async {
            (e.mocks[0]
                .state
                .cancelled
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1)
                .then_some(())
        },
    )
    .await;
    e.fault(0, Faults::default());

    // A stream that goes silent longer than the idle timeout ends with an error event.
    let body = serde_json::json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "mock.chunks=3 mock.interval_ms=1000"}]});
    let text = client()
        .post(format!("{}/v1/chat/completions", e.api))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .expect("stream")
        .text()
        .await
        .unwrap_or_default();
    assert!(text.contains("upstream_idle"), "{text}");

    // A stream that breaks after its first text chunk is not retried (the client has bytes): the
    // client gets the chunk, then an error event.
    e.fault(
        1,
        Faults {
            disconnect_after: Some(2),
            ..Faults::default()
        },
    );
    let body = serde_json::json!({"model": "broken", "stream": true, "messages": [{"role": "user", "content": "mock.chunks=4 mock.interval_ms=50"}]});
    let resp = client()
        .post(format!("{}/v1/chat/completions", e.api))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .expect("stream");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("tok0"), "{text}");
    assert!(text.contains("upstream_disconnect"), "{text}");
    assert_eq!(e.calls(1), 1, "a started stream is never retried");
    assert_eq!(
        e.metric("switchyard_stream_errors_total{reason=\"upstream_disconnect\"}")
            .await,
        1.0
    );
}

/// A stream that breaks off after its head counts against its endpoint when it ends (its
/// head alone said nothing about how it would end): two in a row eject the endpoint, and the
/// streams after that complete on the healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_break_off_eject_their_endpoint() {
    let e = Env::start(2, |u| {
        [
            pool(
                "s",
                &[&u[0], &u[1]],
                "  loadBalancing: RoundRobin\n  outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 30s}",
            ),
            route("s", "  backends: [{pool: s}]"),
        ]
        .concat()
    })
    .await;
    e.fault(
        1,
        Faults {
            disconnect_after: Some(2),
            ..Faults::default()
        },
    );
    let mut broken = 0;
    for _ in 0..12 {
        let (status, text) = stream(&e.api, "s", "mock.chunks=4 mock.interval_ms=20")
            .await
            .expect("stream task");
        assert_eq!(status, 200, "{text}");
        if text.contains("upstream_disconnect") {
            broken += 1;
        } else {
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        }
    }
    assert_eq!(
        broken, 2,
        "two broken streams eject endpoint 1; the other ten complete on endpoint 0"
    );
    assert_eq!(e.calls(1), 2);
    assert_eq!(
        e.metric("switchyard_endpoint_ejections_total{pool=\"default/s\",endpoint=\"1\"}")
            .await,
        1.0
    );
}

/// `connectionPool.maxConnections` caps the requests in flight on each endpoint: a full
/// endpoint is skipped, and with every endpoint full the client gets 503 `connection_limit`
/// at once (nothing reaches the upstream), until a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_per_endpoint() {
    let e = Env::start(2, |u| {
        [
            pool(
                "capped",
                &[&u[0], &u[1]],
                "  loadBalancing: WeightedRandom\n  connectionPool: {maxConnections: 1, maxIdleConnections: 4, idleTimeout: 30s}",
            ),
            route("capped", "  backends: [{pool: capped}]"),
        ]
        .concat()
    })
    .await;
    // Two long streams: whatever the random picks, the second must take the other endpoint.
    let first = stream(&e.api, "capped", "mock.chunks=8 mock.interval_ms=150");
    eventually(
        Duration::from_secs(5),
        "the first stream started",
        || async { (e.calls(0) + e.calls(1) == 1).then_some(()) },
    )
    .await;
    let second = stream(&e.api, "capped", "mock.chunks=8 mock.interval_ms=150");
    eventually(
        Duration::from_secs(5),
        "the second stream started",
        || async { (e.calls(0) + e.calls(1) == 2).then_some(()) },
    )
    .await;
    assert_eq!(
        (e.calls(0), e.calls(1)),
        (1, 1),
        "a full endpoint is skipped"
    );
    // The route's default retry tries again after a backoff (the pool is full everywhere).
    let (s, h, b) = e.chat("capped", "hi").await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "attempts_exhausted", "{b}");
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("#0: connection_limit") && message.contains("#1: connection_limit"),
        "{b}"
    );
    assert_eq!(header(&h, "retry-after"), "1");
    assert_eq!(e.calls(0) + e.calls(1), 2, "nothing reached an upstream");
    assert_eq!(
        e.metric("switchyard_pool_saturations_total{pool=\"default/capped\"}")
            .await,
        2.0
    );
    for s in [first, second] {
        let (status, text) = s.await.expect("stream task");
        assert_eq!(status, 200);
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    let (s, _, b) = e.chat("capped", "hi").await;
    assert_eq!(s, 200, "slots free again when the streams end: {b}");
}

/// Active health checks take an endpoint whose checks fail out of rotation before any
/// request has to fail on it (passive detection is off here), and bring it back when they
/// pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_failing_endpoint_out_and_back() {
    let e = Env::start(2, |u| {
        [
            pool(
                "checked",
                &[&u[0], &u[1]],
                "  loadBalancing: RoundRobin\n  outlierDetection: {consecutiveFailures: 0, consecutiveRateLimits: 0}\n  healthCheck: {interval: 200ms, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 2}",
            ),
            route("checked", "  backends: [{pool: checked}]"),
        ]
        .concat()
    })
    .await;
    let ejections = "switchyard_endpoint_ejections_total{pool=\"default/checked\",endpoint=\"1\"}";
    let returns = "switchyard_endpoint_returns_total{pool=\"default/checked\",endpoint=\"1\"}";
    eventually(Duration::from_secs(5), "both endpoints checked", || async {
        let lists = |i: usize| {
            e.mocks[i]
                .state
                .model_lists
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        (lists(0) >= 2 && lists(1) >= 2).then_some(())
    })
    .await;
    e.fault(1, failing(503));
    eventually(Duration::from_secs(5), "endpoint 1 out", || async {
        (e.metric(ejections).await == 1.0).then_some(())
    })
    .await;
    let before = e.calls(1);
    for _ in 0..8 {
        let (s, h, b) = e.chat("checked", "hi").await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(header(&h, "x-switchyard-backend"), "default/checked#0");
    }
    assert_eq!(
        e.calls(1),
        before,
        "no request went to the failing endpoint"
    );
    assert!(
        e.metric("switchyard_health_check_failures_total{pool=\"default/checked\",endpoint=\"1\"}")
            .await
            >= 2.0
    );
    e.fault(1, Faults::default());
    eventually(Duration::from_secs(5), "endpoint 1 back", || async {
        (e.metric(returns).await == 1.0).then_some(())
    })
    .await;
    let mut backends = std::collections::HashSet::new();
    for _ in 0..4 {
        let (s, h, _) = e.chat("checked", "hi").await;
        assert_eq!(s, 200);
        backends.insert(header(&h, "x-switchyard-backend").to_owned());
    }
    assert!(backends.contains("default/checked#1"), "{backends:?}");
}

/// Opens a stream and reads it to the end on a task; returns the task.
fn stream(api: &str, model: &str, prompt: &str) -> tokio::task::JoinHandle<(u16, String)> {
    let (url, body) = (
        format!("{api}/v1/chat/completions"),
        serde_json::json!({"model": model, "stream": true, "messages": [{"role": "user", "content": prompt}]}),
    );
    tokio::spawn(async move {
        match client()
            .post(url)
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_streams_and_streams_count_against_max_concurrency() {
    let config = |u: &[String]| {
        [
            pool("p", &[&u[0]], ""),
            route("p", "  backends: [{pool: p}]"),
        ]
        .concat()
    };
    let mut e = Env::start_with(
        // (the namespace's share, half of the gateway's by default, set above it: this is
        // about the gateway's slots)
        &[
            "--max-concurrency",
            "1",
            "--max-concurrency-per-namespace",
            "10",
            "--drain-timeout",
            "10s",
        ],
        1,
        config,
    )
    .await;
    // One stream open: it holds the only slot until it ends, not just until its head.
    let open = stream(&e.api, "p", "mock.chunks=6 mock.interval_ms=250");
    eventually(Duration::from_secs(5), "the stream started", || async {
        (e.calls(0) == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _, b) = e.chat("p", "hi").await;
    assert_eq!(s, 503, "the open stream counts: {b}");

    // SIGTERM mid-stream: not ready at once, no new connections, and the stream finishes.
    e.dp.signal_term();
    eventually(
        Duration::from_secs(2),
        "readyz says shutting down",
        || async {
            let (status, text) = switchyard_tests::procs::reqwest_lite::Client::default()
                .get_text(&format!("{}/readyz", e.admin))
                .await?;
            (status == 503 && text.contains("shutting down")).then_some(())
        },
    )
    .await;
    // The listener closes a moment after readiness flips; until it has, a new request is
    // answered 503 `not_ready`. Either way none is served, and soon none connects.
    eventually(Duration::from_secs(5), "the listener closed", || async {
        match reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", e.api))
            .bearer_auth(CLIENT_KEY)
            .json(&chat_body("p", "hi"))
            .send()
            .await
        {
            Err(_) => Some(()),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                assert!(
                    status == 503 && body.contains("not_ready"),
                    "a request after SIGTERM is not served: {status} {body}"
                );
                None
            }
        }
    })
    .await;
    let (status, text) = open.await.expect("join");
    assert_eq!(status, 200);
    assert!(
        text.contains("tok5") && text.trim_end().ends_with("data: [DONE]"),
        "the whole stream: {text}"
    );
    assert!(
        e.dp.wait_exit(Duration::from_secs(5)),
        "exits once the stream is done"
    );
    assert!(
        e.dp.logs().contains("drained: every request finished"),
        "{}",
        e.dp.logs()
    );

    // A stream longer than the drain timeout is cut at the deadline.
    let mut e = Env::start_with(&["--drain-timeout", "500ms"], 1, config).await;
    let open = stream(&e.api, "p", "mock.chunks=20 mock.interval_ms=250");
    eventually(Duration::from_secs(5), "the stream started", || async {
        (e.calls(0) == 1).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    assert!(
        e.dp.terminate(Duration::from_secs(5)),
        "exits within the deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.dp.logs().contains("drain deadline passed"),
        "{}",
        e.dp.logs()
    );
    let (_, text) = open.await.expect("join");
    assert!(!text.contains("[DONE]"), "the stream was cut: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_balancing_takes_the_cheapest_backend_while_it_is_healthy() {
    let e = Env::start(2, |u| {
        let priced = |price: &str| {
            format!(
                "  models: [{{name: m, inputPricePerMillion: \"{price}\", outputPricePerMillion: \"{price}\"}}]\n  outlierDetection: {{consecutiveFailures: 2}}"
            )
        };
        [
            pool("cheap", &[&u[0]], &priced("0.5")),
            pool("dear", &[&u[1]], &priced("5")),
            route(
                "chat",
                "  loadBalancing: Cost\n  backends: [{pool: dear, model: m}, {pool: cheap, model: m}]",
            ),
        ]
        .concat()
    })
    .await;
    for _ in 0..10 {
        let (s, h, _) = e.chat("chat", "hi").await;
        assert_eq!(s, 200);
        assert_eq!(header(&h, "x-switchyard-backend"), "default/cheap#0");
    }
    assert_eq!(e.calls(1), 0, "nothing to the dearer backend");
    // The cheap one fails: retried on the dear one, and once it is ejected, skipped.
    e.fault(0, failing(503));
    for _ in 0..10 {
        let (s, _, b) = e.chat("chat", "hi").await;
        assert_eq!(s, 200, "{b}");
    }
    assert_eq!(e.calls(0), 12, "two failures, then ejected");
    assert_eq!(e.calls(1), 10);
}
