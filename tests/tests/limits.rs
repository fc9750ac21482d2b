//! End-to-end: access control, rate limits and budgets held across three data planes that
//! share one real `redis-server`, driven by concurrent clients over real HTTP.

mod common;

use std::time::Duration;

use common::limits::*;
use common::*;
use serde_json::{Value, json};
use switchyard_tests::procs::eventually;
use switchyard_tests::redis::RedisCluster;

#[tokio::test]
async fn rpm_limit_holds_across_three_proxies_within_five_percent() {
    let env = env("limits-rpm", 3, &[]).await;
    start_of_window(20).await;
    let results = burst(&env.urls(), RPM_KEY, chat_body("demo", "hi"), 64, 450).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let limited: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + limited.len(), results.len(), "only 200s and 429s");
    assert!(
        (143..=157).contains(&ok),
        "a limit of 150/min admitted {ok} across three proxies"
    );
    let (_, h, body) = limited[0];
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "requests");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("requests per minute") && m.contains("Limit 150")),
        "{body}"
    );
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert!(h.contains_key("retry-after-ms"));
    let (_, h, _) = results.iter().find(|r| r.0 == 200).expect("a success");
    assert_eq!(h["x-ratelimit-limit-requests"], "150");
    let remaining: u64 = h["x-ratelimit-remaining-requests"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    assert!(remaining < 150);
    assert!(
        h["x-ratelimit-reset-requests"]
            .to_str()
            .is_ok_and(|v| v.ends_with('s'))
    );
    let rejected: f64 = {
        let mut sum = 0.0;
        for (_, _, admin) in &env.dps {
            sum += metric(
                admin,
                "switchyard_limit_rejections_total{scope=\"key\",limit=\"requests\"}",
            )
            .await;
        }
        sum
    };
    assert_eq!(rejected as usize, limited.len(), "every rejection counted");
    for (_, _, admin) in &env.dps {
        assert_eq!(
            metric(admin, "switchyard_limit_store_errors_total").await,
            0.0
        );
        assert_eq!(metric(admin, "switchyard_limit_store_up").await, 1.0);
        eventually(DEADLINE, "heartbeats count the fleet", || async {
            (metric(admin, "switchyard_fleet_size").await == 3.0).then_some(())
        })
        .await;
    }
}

/// Quota leases (issue 25): two proxies spend slices of the key's limits and budget without a
/// round trip per request. Leased quota is charged in Redis when taken, so the limit is never
/// exceeded; leases shrink near exhaustion, so a proxy refuses early by at most the unspent
/// slices; and an idle lease goes back, after which Redis holds exactly what was used.
#[tokio::test]
async fn quota_leases_hold_the_limit_and_go_back_when_idle() {
    let mut env = env("limits-lease", 2, &[]).await;
    start_of_window(25).await;
    let minute = switchyard_data_plane::policy::limits::now_ms() / 60_000;
    let body = json!({"model": "priced", "max_tokens": 10, "messages": [{"role": "user", "content": "lease me"}]});
    let results = burst(&env.urls(), LEASED_KEY, body, 16, 1100).await;
    let ok = results.iter().filter(|r| r.0 == 200).count() as u64;
    assert!(
        results.iter().all(|r| r.0 == 200 || r.0 == 429),
        "only 200s and 429s"
    );
    // 1% of 1,000 per lease, at most 1/4 of what is left: at the end each proxy holds at
    // most a few unspent requests.
    assert!(
        (990..=1000).contains(&ok),
        "a limit of 1000/min admitted {ok} across two leasing proxies"
    );
    let mut leased = 0.0;
    for (_, _, admin) in &env.dps {
        leased += metric(admin, "switchyard_limit_leased_total").await;
    }
    assert!(
        leased >= ok as f64 / 2.0,
        "most requests were admitted on leases: {leased} of {ok}"
    );
    let cost: u64 = results
        .iter()
        .filter(|r| r.0 == 200)
        .map(|r| r.2["usage"]["total_tokens"].as_u64().expect("usage") * NANOS_PER_TOKEN)
        .sum();
    let rpm = format!("sy:{{k:default/leased}}:rpm:{minute}");
    let par = "sy:{k:default/leased}:par";
    let budget = switchyard_crds::spend::spend_key("default/leased", "all");
    eventually(DEADLINE, "idle leases go back", || async {
        let count = env.redis.query::<u64>(&["GET", &rpm]).unwrap_or(0);
        let slots = env.redis.query::<u64>(&["ZCARD", par]).unwrap_or(u64::MAX);
        let (s, r) = (
            env.redis.hget_u64(&budget, "s"),
            env.redis.hget_u64(&budget, "r"),
        );
        (count == ok && slots == 0 && s == cost && r == 0).then_some(())
    })
    .await;
    for (_, _, admin) in &env.dps {
        assert_eq!(metric(admin, "switchyard_limit_leases").await, 0.0);
    }

    // Budget leases taken on another key, then SIGTERM: each proxy gives its leases back and sends what it
    // has queued before it exits, so Redis is exact at once, not a second later.
    let results = burst(&env.urls(), BUDGET_ONLY_KEY, body2(), 4, 40).await;
    assert!(results.iter().all(|r| r.0 == 200));
    let cost2: u64 = results
        .iter()
        .map(|r| r.2["usage"]["total_tokens"].as_u64().expect("usage") * NANOS_PER_TOKEN)
        .sum();
    let budget2 = switchyard_crds::spend::spend_key("default/leased-budget", "all");
    assert!(
        env.redis.hget_u64(&budget2, "r") > 0,
        "the proxies hold budget leases"
    );
    for (p, _, _) in &mut env.dps {
        assert!(p.terminate(Duration::from_secs(10)), "clean exit");
    }
    assert_eq!(
        env.redis.hget_u64(&budget2, "r"),
        0,
        "leases given back at exit"
    );
    assert_eq!(
        env.redis.hget_u64(&budget2, "s"),
        cost2,
        "every request counted"
    );
}

#[tokio::test]
async fn key_model_and_route_limits_and_route_access() {
    let env = env("limits-access", 2, &[]).await;
    start_of_window(15).await;
    // Route limit: 4 per minute through `team-only`, whatever the proxy.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let (s, h, body) = post(&env.api(i), Some(TEAM_KEY), &chat_body("team-demo", "hi")).await;
        if s == 429 {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("this route")),
                "{body}"
            );
            assert!(h.contains_key("retry-after"));
        }
        statuses.push(s);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    // allowedRoutes: the team key may not use routes outside `team-*`: 403 naming the model.
    let (s, _, body) = post(&env.api(0), Some(TEAM_KEY), &chat_body("demo", "hi")).await;
    assert_openai_error(s, &body, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`demo`")),
        "{body}"
    );
    // /v1/models shows only what the key may use.
    let models: Value = client()
        .get(format!("{}/v1/models", env.dps[0].1))
        .bearer_auth(TEAM_KEY)
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["team-demo"]);
    // The route's key selector keeps keys without the label out.
    let (s, _, body) = post(&env.api(1), Some(CLIENT_KEY), &chat_body("team-demo", "hi")).await;
    assert_openai_error(s, &body, 403);
    // Key x model: `cha*` allows 2 per minute on the rpm key, other models are unaffected.
    let mut chat = Vec::new();
    for i in 0..3 {
        chat.push(post(&env.api(i), Some(RPM_KEY), &chat_body("chat", "hi")).await);
    }
    assert_eq!(
        chat.iter().map(|r| r.0).collect::<Vec<_>>(),
        [200, 200, 429]
    );
    assert!(
        chat[2].2["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("on this model")),
        "{}",
        chat[2].2
    );
    let (s, _, _) = post(&env.api(0), Some(RPM_KEY), &chat_body("demo", "hi")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn budgets_price_cache_reads_and_writes_at_their_own_prices() {
    let env = env("limits-cache", 1, &[]).await;
    // Through the OpenAI front door to Anthropic, which reports cache reads and writes.
    let body = json!({"model": "cached", "max_tokens": 10, "messages": [{"role": "user",
        "content": "a long system prompt would be cached here, so this one pretends mock.cache=1 mock.chunks=4"}]});
    let (status, _, out) = post(&env.api(0), Some(CACHE_KEY), &body).await;
    assert_eq!(status, 200, "{out}");
    let u = &out["usage"];
    let input = u["prompt_tokens"].as_u64().expect("prompt tokens");
    let read = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cache reads");
    let write = u["cache_creation_input_tokens"]
        .as_u64()
        .expect("cache writes");
    let output = u["completion_tokens"].as_u64().expect("completion tokens");
    assert!(read > 0 && write > 0 && input > read + write, "{u}");
    // Micro-dollars per million tokens: 3.00 in, 15.00 out, 0.30 cache read, 3.75 cache write.
    let expected = ((input - read - write) * 3_000_000
        + read * 300_000
        + write * 3_750_000
        + output * 15_000_000)
        / 1000;
    let as_if_uncached = (input * 3_000_000 + output * 15_000_000) / 1000;
    assert_ne!(
        expected, as_if_uncached,
        "the test must tell the prices apart"
    );
    let period = switchyard_crds::spend::period(
        switchyard_proto::v1::BudgetPeriod::Monthly,
        (switchyard_data_plane::policy::limits::now_ms() / 1000) as i64,
    );
    let key = switchyard_crds::spend::spend_key("default/cache", &period.id);
    eventually(
        DEADLINE,
        "the spend settles at the cache-aware price",
        || async {
            (env.redis.hget_u64(&key, "s") == expected && env.redis.hget_u64(&key, "r") == 0)
                .then_some(())
        },
    )
    .await;
}

/// The text of a client stream's deltas (OpenAI chunks or Anthropic events), and the usage
/// of an Anthropic `message_start` when there is one.
fn stream_deltas(sse: &str) -> (String, Option<Value>) {
    let mut text = String::new();
    let mut usage = None;
    for data in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if v["type"] == "content_block_delta"
            && let Some(t) = v["delta"]["text"].as_str()
        {
            text.push_str(t);
        }
        if v["type"] == "message_start" {
            usage = Some(v["message"]["usage"].clone());
        }
    }
    (text, usage)
}

/// A stream the upstream breaks off settles what it used: the prompt, and the output that
/// reached the client (four bytes a token), not the reservation for `max_tokens` and not
/// nothing. Through the Anthropic passthrough and the OpenAI front door (translated).
#[tokio::test]
async fn a_broken_stream_settles_what_was_delivered() {
    let env = env("limits-broken", 1, &[]).await;
    let api = &env.dps[0].1;
    let period = switchyard_crds::spend::period(
        switchyard_proto::v1::BudgetPeriod::Monthly,
        (switchyard_data_plane::policy::limits::now_ms() / 1000) as i64,
    );
    let key = switchyard_crds::spend::spend_key("default/cache", &period.id);
    let prompt = "mock.chunks=12 mock.interval_ms=10 mock.disconnect_after=6 tell me";
    let open = |path: &str, body: Value| {
        let url = format!("{api}{path}");
        async move {
            let resp = client()
                .post(url)
                .bearer_auth(CACHE_KEY)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .expect("stream");
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap_or_default()
        }
    };
    let settled = |want: u64| {
        let (redis, key) = (&env.redis, &key);
        async move {
            eventually(DEADLINE, "the broken stream settles", || async {
                let (s, r) = (redis.hget_u64(key, "s"), redis.hget_u64(key, "r"));
                (r == 0 && s > 0).then_some(s)
            })
            .await;
            let s = redis.hget_u64(key, "s");
            assert_eq!(
                s,
                want,
                "spend {s} nano-dollars, expected {want} (the reservation was 2000 output tokens, {} nano-dollars)",
                2000 * 15_000
            );
        }
    };

    // Anthropic passthrough: message_start says the input; the output is what got through.
    let sse = open(
        "/v1/messages",
        json!({"model": "cached", "max_tokens": 2000, "stream": true,
            "messages": [{"role": "user", "content": prompt}]}),
    )
    .await;
    assert!(sse.contains("event: error"), "{sse}");
    let (text, usage) = stream_deltas(&sse);
    let usage = usage.expect("message_start");
    let input = usage["input_tokens"].as_u64().expect("input tokens");
    let reported_output = usage["output_tokens"].as_u64().unwrap_or(0);
    let delivered = (text.len() as u64).div_ceil(4);
    assert!(!text.is_empty() && delivered > reported_output, "{sse}");
    // Nano-dollars: $3 per million input tokens, $15 per million output tokens.
    let first = input * 3_000 + delivered * 15_000;
    settled(first).await;

    // OpenAI front door, translated: the same prompt, so the same input tokens.
    let sse = open(
        "/v1/chat/completions",
        json!({"model": "cached", "max_tokens": 2000, "stream": true,
            "messages": [{"role": "user", "content": prompt}]}),
    )
    .await;
    assert!(sse.contains("upstream_disconnect"), "{sse}");
    let (text, _) = stream_deltas(&sse);
    assert!(!text.is_empty(), "{sse}");
    settled(first + input * 3_000 + (text.len() as u64).div_ceil(4) * 15_000).await;
}

#[tokio::test]
async fn budget_overspend_is_bounded_by_requests_in_flight() {
    let env = env("limits-budget", 3, &[]).await;
    let body = json!({"model": "priced", "max_tokens": 10, "messages": [{"role": "user", "content": "count my spend please"}]});
    let results = burst(&env.urls(), BUDGET_KEY, body, 64, 400).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let blocked: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + blocked.len(), results.len());
    assert!(!blocked.is_empty(), "the budget must run out");
    let b = &blocked[0].2;
    assert_eq!(b["error"]["code"], "budget_exceeded", "{b}");
    assert!(
        blocked[0].1.contains_key("retry-after"),
        "daily budgets say when they reset"
    );
    // Every admitted request's actual cost, from the usage it returned.
    let cost: u64 = results
        .iter()
        .filter(|r| r.0 == 200)
        .map(|r| r.2["usage"]["total_tokens"].as_u64().expect("usage") * NANOS_PER_TOKEN)
        .sum();
    let per_request = cost / ok as u64;
    let amount = 2_000_000_000u64;
    let period = switchyard_crds::spend::period(
        switchyard_proto::v1::BudgetPeriod::Daily,
        (switchyard_data_plane::policy::limits::now_ms() / 1000) as i64,
    );
    let key = switchyard_crds::spend::spend_key("default/budget", &period.id);
    let spent = eventually(DEADLINE, "settlements land", || async {
        let (s, r) = (env.redis.hget_u64(&key, "s"), env.redis.hget_u64(&key, "r"));
        (r == 0 && s == cost).then_some(s)
    })
    .await;
    assert!(spent >= amount, "the budget was used: {spent}");
    assert!(
        spent <= amount + 64 * per_request,
        "spent {spent} exceeds {amount} by more than 64 requests in flight of {per_request}"
    );

    // An Alert budget keeps serving past its amount ($0.05, ~3 requests here), and counts.
    let body = json!({"model": "priced", "max_tokens": 10, "messages": [{"role": "user", "content": "alert me"}]});
    let results = burst(&env.urls(), ALERT_KEY, body, 4, 12).await;
    assert!(results.iter().all(|r| r.0 == 200), "Alert never blocks");
    let mut alerts = 0.0;
    for (_, _, admin) in &env.dps {
        alerts += metric(admin, "switchyard_budget_alerts_total").await;
    }
    assert!(
        alerts >= 6.0,
        "requests over the budget are counted: {alerts}"
    );
}

#[tokio::test]
async fn tpm_limit_counts_streamed_usage() {
    let env = env("limits-tpm", 2, &[]).await;
    start_of_window(15).await;
    // The estimate is small (short prompt, max_tokens 5); the stream reports 600 completion
    // tokens. The limit must count the 600.
    let stream = json!({"model": "chat", "stream": true, "max_tokens": 5,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "mock.chunks=600 go"}]});
    let resp = client()
        .post(env.api(0))
        .bearer_auth(TPM_KEY)
        .json(&stream)
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-ratelimit-limit-tokens"], "1000");
    let text = resp.text().await.expect("body");
    assert!(
        text.contains("\"completion_tokens\":600"),
        "mock reported usage"
    );
    // Once settled, another proxy sees ~600 used: a request estimated at ~500 is refused.
    let big = json!({"model": "chat", "max_tokens": 450, "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, body) = eventually(DEADLINE, "streamed usage counted", || async {
        let r = post(&env.api(1), Some(TPM_KEY), &big).await;
        (r.0 == 429).then_some(r)
    })
    .await;
    assert_eq!(s, 429);
    assert_eq!(body["error"]["type"], "tokens", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tokens per minute"))
    );
    // A small one still fits, and its headers show what the stream used.
    let small =
        json!({"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let (s, h, _) = post(&env.api(1), Some(TPM_KEY), &small).await;
    assert_eq!(s, 200);
    let remaining: u64 = h["x-ratelimit-remaining-tokens"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("n");
    assert!(
        remaining < 400,
        "remaining {remaining} must reflect the 600 streamed tokens"
    );
}

#[tokio::test]
async fn parallel_limit_counts_requests_in_flight_fleet_wide() {
    let env = env("limits-par", 3, &[]).await;
    let results = burst(&env.urls(), PAR_KEY, chat_body("slow", "hi"), 6, 6).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(ok, 2, "two in flight at once across three proxies");
    let limited = results.iter().find(|r| r.0 == 429).expect("a 429");
    assert_eq!(limited.1["retry-after"], "1");
    // Leases end with the responses (released a moment after them; held, they last minutes).
    eventually(Duration::from_secs(5), "leases released", || async {
        let r = burst(&env.urls(), PAR_KEY, chat_body("slow", "hi"), 2, 2).await;
        r.iter().all(|r| r.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn key_deleted_mid_run_stops_working() {
    let env = env("limits-delete", 2, &[]).await;
    let (s, _, _) = post(&env.api(0), Some(RPM_KEY), &chat_body("demo", "hi")).await;
    assert_eq!(s, 200);
    let cfg = env.dir.join("config").join("limits.yaml");
    let without: String = limits_config()
        .split("\n---\n")
        .filter(|doc| !doc.contains("name: rpm}"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(!without.contains("key: rpm}"));
    std::fs::write(&cfg, without).expect("rewrite");
    for i in 0..2 {
        let (s, _, body) = eventually(DEADLINE, "key removed everywhere", || async {
            let r = post(&env.api(i), Some(RPM_KEY), &chat_body("demo", "hi")).await;
            (r.0 == 401).then_some(r)
        })
        .await;
        assert_openai_error(s, &body, 401);
    }
    // Other keys keep working. This one has a budget but `demo` has no prices: a budget
    // fails closed, the model is refused (403), and the log says so once.
    let (s, _, b) = post(&env.api(0), Some(BUDGET_KEY), &chat_body("demo", "hi")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("model_not_priced")),
        "{b}"
    );
    let (s, _, _) = post(&env.api(0), Some(BUDGET_KEY), &chat_body("demo", "hi")).await;
    assert_eq!(s, 403);
    let (s, _, _) = post(&env.api(0), Some(BUDGET_KEY), &chat_body("priced", "hi")).await;
    assert_eq!(s, 200, "a priced model is served");
    let logs = env.dps[0].0.logs();
    assert_eq!(
        logs.matches("a model without prices in its ProviderPool: refused")
            .count(),
        1,
        "{logs}"
    );
}

#[tokio::test]
async fn limits_hold_on_a_redis_cluster() {
    let dir = temp_dir("limits-cluster");
    let (_mock, mock_url) = start_mock(&dir);
    let cluster = RedisCluster::start(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock_url)).expect("write");
    std::fs::write(
        cfg.join("limits.yaml"),
        limits_config().replace("{MOCK}", &mock_url),
    )
    .expect("write");
    let seeds = cluster.seeds();
    let dps: Vec<_> = (0..2)
        .map(|i| {
            let node = format!("dp-{i}");
            let args = [
                "--redis-url",
                &seeds,
                "--redis-cluster",
                "--node-id",
                &node,
                "--redis-timeout",
                "2s",
            ];
            start_standalone(&cfg, &args, &dir)
        })
        .collect();
    for (_, _, admin) in &dps {
        wait_ready(admin).await;
    }
    let urls: Vec<String> = dps
        .iter()
        .map(|d| format!("{}/v1/chat/completions", d.1))
        .collect();
    start_of_window(20).await;
    // The key's counters in one slot, exact across both proxies.
    let results = burst(&urls, RPM_KEY, chat_body("demo", "hi"), 32, 220).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(ok, 150, "a limit of 150/min on a cluster");
    // Key and route counters in different slots, checked in one request.
    let mut statuses = Vec::new();
    for url in urls.iter().cycle().take(6) {
        statuses.push(
            post(url, Some(TEAM_KEY), &chat_body("team-demo", "hi"))
                .await
                .0,
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    for (_, _, admin) in &dps {
        assert_eq!(
            metric(admin, "switchyard_limit_store_errors_total").await,
            0.0
        );
    }
}
