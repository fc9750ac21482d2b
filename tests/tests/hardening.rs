//! End-to-end: the gateway holds under abusive clients and keys, against the real binary.
//!
//! - Listeners: 600 connections dribbling unfinished headers and 200 requests from one key
//!   sending their bodies a few bytes a second, while another key's requests keep succeeding,
//!   and the process stays far below the chart's 256 MiB memory limit; a client that stops
//!   reading a stream is cut off after the write timeout.
//! - Client-chosen model names never become metric series or counters: 1,000 distinct 1 MB
//!   names leave `/metrics` and the memory where they were.
//! - Budgets fail closed: a model without a price is refused to a key with a budget (an
//!   alias and a pool's default price are priced); `count_tokens` counts against RPM.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use switchyard_tests::procs::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ATTACKER: &str = "sk-hardening-attacker-01";
const VICTIM: &str = "sk-hardening-victim-0001";
const BUDGETED: &str = "sk-hardening-budget-001";
const COUNTED: &str = "sk-hardening-counted-01";

/// The chart's memory limit of a data plane.
const POD_LIMIT: u64 = 256 << 20;

fn config(mock: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: hardening-keys}}
stringData: {{attacker: {ATTACKER}, victim: {VICTIM}, budgeted: {BUDGETED}, counted: {COUNTED}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: attacker}}
spec: {{secretRef: {{name: hardening-keys, key: attacker}}, limits: {{requestsPerMinute: 1}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: victim}}
spec: {{secretRef: {{name: hardening-keys, key: victim}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: budgeted}}
spec: {{secretRef: {{name: hardening-keys, key: budgeted}}, budget: {{amount: "50", period: Monthly}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: counted}}
spec: {{secretRef: {{name: hardening-keys, key: counted}}, limits: {{requestsPerMinute: 2}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: claude}}
spec:
  provider: anthropic
  endpoints: [{{url: "{mock}", credentialSecretRef: {{name: upstream-cred, key: api-key}}}}]
  models:
  - {{name: claude-sonnet-4, aliases: [claude-sonnet-4-20250514], inputPricePerMillion: "3", outputPricePerMillion: "15"}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: anything}}
spec:
  provider: openai
  endpoints: [{{url: "{mock}/v1", credentialSecretRef: {{name: upstream-cred, key: api-key}}}}]
  models: [{{name: mock-gpt}}]
  defaultPrice: {{inputPricePerMillion: "1", outputPricePerMillion: "2"}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: claude}}
spec: {{models: ["claude-*"], backends: [{{pool: claude}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: anything}}
spec: {{models: ["any-*"], backends: [{{pool: anything}}]}}
"#
    )
}

struct Env {
    _mock: switchyard_tests::procs::Proc,
    dp: switchyard_tests::procs::Proc,
    api: String,
    admin: String,
}

async fn env(tag: &str, extra: &[&str]) -> Env {
    let dir = temp_dir(tag);
    let (mock_proc, mock) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock)).expect("write");
    std::fs::write(cfg.join("hardening.yaml"), config(&mock)).expect("write");
    let (dp, api, admin) = start_standalone(&cfg, extra, &dir);
    wait_ready(&admin).await;
    Env {
        _mock: mock_proc,
        dp,
        api,
        admin,
    }
}

/// Opens connections no faster than the gateway takes them from its listen queue: a small
/// queue (`net.core.somaxconn`) that overflows while a loaded machine is slow to accept makes
/// the kernel reset connections the gateway never saw.
struct Pace {
    admin: String,
    base: f64,
    opened: u32,
}

impl Pace {
    const BATCH: u32 = 32;

    async fn new(admin: &str) -> Self {
        Self {
            admin: admin.to_owned(),
            base: Self::accepted(admin).await,
            opened: 0,
        }
    }

    async fn accepted(admin: &str) -> f64 {
        metric(
            admin,
            "switchyard_connections_accepted_total{listener=\"api\"}",
        )
        .await
    }

    /// Before opening one more connection: after every batch, wait until all were taken.
    async fn one_more(&mut self) {
        if self.opened > 0 && self.opened.is_multiple_of(Self::BATCH) {
            let want = self.base + f64::from(self.opened);
            eventually(Duration::from_secs(20), "connections accepted", || async {
                (Self::accepted(&self.admin).await >= want).then_some(())
            })
            .await;
        }
        self.opened += 1;
    }
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn listeners_hold_under_slow_headers_and_slow_bodies() {
    let e = env(
        "hardening-listeners",
        &[
            "--header-read-timeout",
            "2s",
            "--idle-timeout",
            "5s",
            "--max-concurrency",
            "400",
            "--max-concurrency-per-key",
            "50",
            "--body-timeout",
            "30s",
            "--body-min-rate",
            "1024",
            "--write-timeout",
            "2s",
        ],
    )
    .await;
    let addr = host_port(&e.api);
    let rss_before = e.dp.rss();

    // 600 connections that send part of a request head, a byte at a time.
    let mut dribblers = Vec::new();
    let mut pace = Pace::new(&e.admin).await;
    for _ in 0..600 {
        pace.one_more().await;
        let addr = addr.clone();
        dribblers.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                return None;
            };
            let _ = s
                .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-pad: ")
                .await;
            let opened = Instant::now();
            let mut buf = [0u8; 256];
            loop {
                if let Err(e) = s.write_all(b"a").await {
                    return Some((opened.elapsed(), format!("write {:?}", e.kind())));
                }
                let read = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
                match read {
                    Ok(Ok(0)) => return Some((opened.elapsed(), "eof".to_owned())),
                    Ok(Err(e)) => return Some((opened.elapsed(), format!("read {:?}", e.kind()))),
                    _ => {}
                }
                if opened.elapsed() > Duration::from_secs(30) {
                    return None;
                }
            }
        }));
    }

    // 200 requests of one key whose bodies arrive ten bytes a second.
    let mut slow = Vec::new();
    for _ in 0..200 {
        pace.one_more().await;
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ATTACKER}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.ok()?;
            let started = Instant::now();
            let mut answer = Vec::new();
            loop {
                if s.write_all(b"          ").await.is_err() {
                    break;
                }
                let mut buf = [0u8; 4096];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => break,
                    Ok(Ok(n)) => {
                        answer.extend_from_slice(&buf[..n]);
                        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Err(_) => {}
                }
                if started.elapsed() > Duration::from_secs(40) {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&answer).into_owned();
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok());
            Some((status, started, Instant::now()))
        }));
    }

    // Meanwhile the other key is served, every time.
    let url = format!("{}/v1/chat/completions", e.api);
    let mut served = 0;
    let until = Instant::now() + Duration::from_secs(6);
    let mut peak_rss = 0;
    while Instant::now() < until {
        let (s, _, b) = post(&url, Some(VICTIM), &chat_body("mock-gpt", "hello")).await;
        assert_eq!(s, 200, "the other key is served: {b}");
        served += 1;
        peak_rss = peak_rss.max(e.dp.rss());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 20, "{served}");

    // Every dribbling connection was closed by the head timeout.
    let mut closed = 0;
    let mut hows = std::collections::BTreeMap::new();
    for d in dribblers {
        if let Ok(Some((after, how))) = d.await {
            assert!(after < Duration::from_secs(10), "closed after {after:?}");
            closed += 1;
            *hows.entry(how).or_insert(0) += 1;
        }
    }
    assert_eq!(closed, 600, "every dribbling connection closed: {hows:?}");
    // The slow bodies: the key's share is read and then refused as too slow (408); beyond
    // the share, 429 at once. None holds a slot for long.
    let mut statuses = std::collections::BTreeMap::new();
    let mut read = Vec::new();
    for r in slow {
        if let Ok(Some((status, sent, answered))) = r.await {
            let took = answered - sent;
            assert!(took < Duration::from_secs(10), "{status:?} after {took:?}");
            *statuses.entry(status).or_insert(0) += 1;
            if status == Some(408) {
                read.push((sent, answered));
            }
        }
    }
    assert_eq!(
        statuses.get(&Some(408)).copied().unwrap_or(0)
            + statuses.get(&Some(429)).copied().unwrap_or(0),
        200,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&Some(429)).copied().unwrap_or(0) >= 1,
        "beyond the key's share of 50: {statuses:?}"
    );
    // At no moment were more than the share's 50 bodies being read. (How many are refused
    // depends on how fast the connections open: a refused body frees its place after a
    // second.) The gateway's reading lies inside what the client saw, a second or more;
    // 400 ms off each end leaves room for the delays of a loaded machine.
    let slack = Duration::from_millis(400);
    let mut edges: Vec<(Instant, i32)> = read
        .iter()
        .filter(|(sent, answered)| *answered > *sent + 2 * slack)
        .flat_map(|(sent, answered)| [(*sent + slack, 1), (*answered - slack, -1)])
        .collect();
    edges.sort();
    let most = edges
        .iter()
        .scan(0, |open, (_, d)| {
            *open += d;
            Some(*open)
        })
        .max()
        .unwrap_or(0);
    assert!(most <= 50, "{most} bodies read at once: {statuses:?}");
    let rss_after = e.dp.rss();
    assert!(
        peak_rss.max(rss_after) < POD_LIMIT / 2,
        "memory stays far below the pod limit: before {rss_before}, peak {peak_rss}, after {rss_after}"
    );
    let head_closes = metric(
        &e.admin,
        "switchyard_connections_closed_total{listener=\"api\",reason=\"header_timeout\"}",
    )
    .await;
    assert!(
        head_closes >= 600.0,
        "{head_closes}; {}; the clients saw {hows:?}",
        metric(&e.admin, "switchyard_connections_closed_total").await
    );
    assert!(
        metric(
            &e.admin,
            "switchyard_requests_total{endpoint=\"chat_completions\",status=\"408\",error=\"body_timeout\"}"
        )
        .await
            >= 1.0
    );
    // An idle keep-alive connection is closed after the idle timeout.
    let mut idle = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let req =
        format!("GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {VICTIM}\r\n\r\n");
    idle.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 65536];
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("closed when idle");
    assert!(
        closed >= Duration::from_secs(4) && closed < Duration::from_secs(12),
        "idle connection closed after {closed:?}"
    );

    // A client that asks for a long stream and stops reading: once the socket's buffers
    // are full the connection is closed after the write timeout, and its request's slots
    // come back (the key serves its share again).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let mut stalled = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    // 8 MB echoed back in 2,000 events: more than the socket buffers hold.
    let prompt = format!(
        "mock.echo=1 {}",
        format!("{} ", "x".repeat(4000)).repeat(2000)
    );
    let mut body = chat_body("mock-gpt", &prompt);
    body["stream"] = json!(true);
    let body = body.to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {VICTIM}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(req.as_bytes()).await.expect("write");
    let n = stalled.read(&mut buf).await.expect("head");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let closes = "switchyard_connections_closed_total{listener=\"api\",reason=\"write_timeout\"}";
    eventually(Duration::from_secs(20), "a write-timeout close", || async {
        (metric(&e.admin, closes).await >= 1.0).then_some(())
    })
    .await;
    // What reaches the client is what was buffered: the stream never finished.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut rest))
        .await
        .expect("the connection was closed");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("[DONE]"),
        "the stream was cut, {} bytes reached the client",
        rest.len()
    );
    let (s, _, b) = post(&url, Some(VICTIM), &chat_body("mock-gpt", "hello")).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn client_chosen_model_names_never_become_series_or_counters() {
    let e = env("hardening-labels", &[]).await;
    let url = format!("{}/v1/chat/completions", e.api);
    let metrics = || async {
        client()
            .get(format!("{}/metrics", e.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default()
    };
    // One request of each outcome first, so every series exists.
    let (s, _, b) = post(&url, Some(ATTACKER), &chat_body("any-first", "hi")).await;
    assert_eq!(s, 200, "{b}");
    let (s, _, _) = post(&url, Some(ATTACKER), &chat_body("any-second", "hi")).await;
    assert_eq!(s, 429, "one a minute");
    let before = metrics().await;
    let rss_before = e.dp.rss();
    let filler = "x".repeat(1 << 20);
    let c = client();
    let mut served = 0;
    for i in 0..1000 {
        let body = json!({"model": format!("any-{i}-{filler}"), "messages": [{"role": "user", "content": "hi"}]});
        let r = c
            .post(&url)
            .bearer_auth(ATTACKER)
            .json(&body)
            .send()
            .await
            .expect("send");
        match r.status().as_u16() {
            429 => {}
            // A new minute's window admits one.
            200 => served += 1,
            s => panic!("status {s}"),
        }
    }
    assert!(served <= 2, "a 1-rpm key: {served} served");
    let after = metrics().await;
    let rss_after = e.dp.rss();
    assert!(
        after.len() < before.len() + 2048,
        "/metrics did not grow: {} -> {} bytes",
        before.len(),
        after.len()
    );
    assert!(
        !after.lines().any(|l| l.len() > 2048),
        "no series carries a client's name"
    );
    assert!(after.contains("gen_ai_request_model=\"_other\""), "{after}");
    assert!(
        rss_after < rss_before + (64 << 20),
        "memory held: {rss_before} -> {rss_after}"
    );
}

#[tokio::test]
async fn budgets_fail_closed_and_count_tokens_counts_against_rpm() {
    let e = env("hardening-budgets", &[]).await;
    let messages = format!("{}/v1/messages", e.api);
    let ask = |key: &'static str, model: &str, path: &str| {
        let body = json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
        let url = format!("{}{path}", e.api);
        async move {
            let r = client()
                .post(&url)
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // A glob route: a model its pool does not price is refused to a budgeted key, in the
    // caller's dialect; an alias of a priced model, and any model of a pool with a default
    // price, are served.
    let (s, b) = ask(BUDGETED, "claude-opus-4-1", "/v1/messages").await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["type"], "error");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no price"),
        "{b}"
    );
    let (s, b) = ask(BUDGETED, "claude-sonnet-4-20250514", "/v1/messages").await;
    assert_eq!(s, 200, "an alias is priced: {b}");
    let (s, b) = ask(BUDGETED, "any-model-at-all", "/v1/messages").await;
    assert_eq!(s, 200, "the pool's default price: {b}");
    // Without a budget, an unpriced model is served.
    let (s, b) = ask(VICTIM, "claude-opus-4-1", "/v1/messages").await;
    assert_eq!(s, 200, "{b}");
    let _ = &messages;
    // count_tokens counts against requests per minute (2 here).
    for _ in 0..2 {
        let (s, b) = ask(COUNTED, "claude-sonnet-4", "/v1/messages/count_tokens").await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = ask(COUNTED, "claude-sonnet-4", "/v1/messages/count_tokens").await;
    assert_eq!(s, 429, "{b}");
    let (s, _) = ask(COUNTED, "claude-sonnet-4", "/v1/messages").await;
    assert_eq!(s, 429, "the same minute's window");
    eventually(DEADLINE, "refusals counted", || async {
        (metric(&e.admin, "switchyard_requests_total{endpoint=\"messages\",status=\"403\",error=\"model_not_allowed\"}").await >= 1.0)
            .then_some(())
    })
    .await;
}
