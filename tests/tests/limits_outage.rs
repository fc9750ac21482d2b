//! End-to-end: what the limits do when Redis goes away (fail open, settlements kept and
//! replayed exactly once) against a real `redis-server` that is stopped and restarted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::limits::*;
use common::*;
use serde_json::json;
use switchyard_tests::procs::eventually;
use switchyard_tests::redis::RedisServer;

#[tokio::test]
async fn redis_outage_fails_open_and_replays_settlements() {
    // Exact mode: with leases, a proxy serves a busy key from quota it already holds in Redis
    // and this test would not reach the local fallback it is about.
    let mut env = env(
        "limits-outage",
        2,
        &["--redis-timeout", "200ms", "--limit-lease-percent", "0"],
    )
    .await;
    let cfg = env.dir.join("config");
    let (mut closed, closed_api, closed_admin) = start_standalone(
        &cfg,
        &[
            "--redis-url",
            &env.redis.url(),
            "--redis-fail-mode",
            "closed",
            "--redis-timeout",
            "200ms",
        ],
        &env.dir,
    );
    wait_ready(&closed_admin).await;
    let body = json!({"model": "priced", "max_tokens": 10, "messages": [{"role": "user", "content": "outage test"}]});
    let key = switchyard_crds::spend::spend_key("default/outage", "all");
    let mut cost = 0;
    for i in 0..4 {
        let (s, _, b) = post(&env.api(i), Some(OUTAGE_KEY), &body).await;
        assert_eq!(s, 200, "{b}");
        cost += b["usage"]["total_tokens"].as_u64().expect("usage") * NANOS_PER_TOKEN;
    }
    eventually(DEADLINE, "spend before the outage", || async {
        (env.redis.hget_u64(&key, "s") == cost).then_some(())
    })
    .await;

    env.redis.kill();
    // Fail open: served with local limits, and each request's spend is kept for later.
    for i in 0..6 {
        let (s, _, b) = post(&env.api(i), Some(OUTAGE_KEY), &body).await;
        assert_eq!(s, 200, "fail open serves: {b}");
        cost += b["usage"]["total_tokens"].as_u64().expect("usage") * NANOS_PER_TOKEN;
    }
    // Fail closed: 503 with an OpenAI error, never a hang.
    let closed_url = format!("{closed_api}/v1/chat/completions");
    let (s, _, b) = post(&closed_url, Some(OUTAGE_KEY), &body).await;
    assert_openai_error(s, &b, 503);
    assert_eq!(b["error"]["code"], "limits_unavailable");
    // Keys without limits never touch Redis and keep working.
    let (s, _, _) = post(&closed_url, Some(CLIENT_KEY), &chat_body("demo", "hi")).await;
    assert_eq!(s, 200);
    let admin = &env.dps[0].2;
    assert_eq!(metric(admin, "switchyard_limit_store_up").await, 0.0);
    assert!(metric(admin, "switchyard_limit_fallbacks_total{result=\"local\"}").await >= 1.0);
    assert!(
        metric(
            &closed_admin,
            "switchyard_limit_fallbacks_total{result=\"rejected\"}"
        )
        .await
            >= 1.0
    );
    assert!(metric(admin, "switchyard_limit_pending_settlements").await >= 1.0);

    env.redis.restart();
    // Every proxy returns to Redis by itself and replays what it spent meanwhile.
    let admins: Vec<String> = env
        .dps
        .iter()
        .map(|d| d.2.clone())
        .chain([closed_admin.clone()])
        .collect();
    for admin in &admins {
        eventually(DEADLINE, "back on Redis", || async {
            (metric(admin, "switchyard_limit_store_up").await == 1.0).then_some(())
        })
        .await;
    }
    eventually(DEADLINE, "no settlement lost", || async {
        (env.redis.hget_u64(&key, "s") == cost).then_some(())
    })
    .await;
    let (s, _, b) = post(&closed_url, Some(OUTAGE_KEY), &body).await;
    assert_eq!(s, 200, "fail-closed proxy serves again: {b}");
    for (p, _, _) in &mut env.dps {
        assert!(p.running(), "no crash: {}", p.logs());
    }
    assert!(closed.running(), "no crash: {}", closed.logs());
}

/// The fault test of issue 11, at full speed: concurrent clients on a budgeted key while Redis
/// is away for 3 s. Nothing is dropped (settlements are summed per counter, so the replay is a
/// handful of commands whatever the traffic), the proxy is back on Redis within a second of it
/// answering, and the spend in Redis is what the clients were told they used (none lost; at
/// most the batch in flight when Redis died counted twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_at_full_speed_loses_no_spend() {
    let mut env = env("limits-fullspeed", 1, &["--redis-timeout", "200ms"]).await;
    let key = switchyard_crds::spend::spend_key("default/outage", "all");
    let admin = env.dps[0].2.clone();
    let url = env.api(0);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spent = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (url, stop, spent, served) =
                (url.clone(), stop.clone(), spent.clone(), served.clone());
            tokio::spawn(async move {
                let body = json!({"model": "priced", "max_tokens": 10, "messages": [{"role": "user", "content": "full speed"}]});
                while !stop.load(Ordering::Relaxed) {
                    let (s, _, b) = post(&url, Some(OUTAGE_KEY), &body).await;
                    assert_eq!(s, 200, "fail open serves every request: {b}");
                    let tokens = b["usage"]["total_tokens"].as_u64().expect("usage");
                    spent.fetch_add(tokens * NANOS_PER_TOKEN, Ordering::Relaxed);
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.redis.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&admin, "switchyard_limit_store_up").await, 0.0);
    let during = served.load(Ordering::Relaxed);
    let pending = metric(&admin, "switchyard_limit_pending_settlements").await;
    assert!(
        (1.0..=4.0).contains(&pending),
        "pending settlements are counters, not requests: {pending} after {during} requests"
    );
    env.redis.restart();
    let answering = std::time::Instant::now();
    eventually(DEADLINE, "back on Redis", || async {
        (metric(&admin, "switchyard_limit_store_up").await == 1.0).then_some(())
    })
    .await;
    let back = answering.elapsed();
    assert!(
        back < Duration::from_secs(1),
        "back on Redis {back:?} after it answered"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    // Nothing is lost and nothing counts twice: the settlement batch in flight when Redis
    // died is kept by number, and replayed only if Redis's marker says it was not applied.
    let want = spent.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let got = env.redis.hget_u64(&key, "s");
        if got == want {
            break;
        }
        assert!(
            got < want,
            "spend in Redis {got} nano-dollars is more than the {want} the clients used: a batch counted twice"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "spend lost: Redis holds {got} nano-dollars, clients were told {want} ({} requests)",
            served.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.redis.hget_u64(&key, "s"), want, "and stays there");
    assert_eq!(
        metric(&admin, "switchyard_limit_pending_settlements").await,
        0.0
    );
    eprintln!(
        "{} requests, {during} before the restart; back on Redis in {back:?}",
        served.load(Ordering::Relaxed)
    );
}

/// A settlement batch and its marker land together, so a proxy whose call failed can ask
/// Redis whether the batch was applied.
#[tokio::test]
async fn a_settlement_batch_is_marked_with_its_number() {
    use switchyard_data_plane::policy::limits::store::{LimitStore, SettleOp, SettleRequest};
    let dir = temp_dir("limits-marked");
    let redis = RedisServer::start(&dir);
    let store = switchyard_data_plane::policy::limits::redis::RedisStore::new(
        &redis.url(),
        Duration::from_secs(2),
    )
    .expect("store");
    assert!(
        store.marks_batches(),
        "one Redis node applies a batch atomically"
    );
    assert_eq!(
        store.marked("node-a").await.expect("marker"),
        0,
        "nothing yet"
    );
    let key = "sy:{k:ns/y}:budget:all";
    let req = |spent| SettleRequest {
        member: "m1".into(),
        groups: vec![vec![
            SettleOp::Spend {
                key: key.into(),
                reserved: 0,
                spent,
                ttl_ms: 0,
            },
            SettleOp::Adjust {
                key: "sy:{k:ns/y}:tpm".into(),
                delta: 5,
            },
        ]],
    };
    store
        .settle_marked(&[req(300), req(400)], "node-a", 7)
        .await
        .expect("settle");
    assert_eq!(redis.hget_u64(key, "s"), 700);
    assert_eq!(store.marked("node-a").await.expect("marker"), 7);
    assert_eq!(
        store.marked("node-b").await.expect("marker"),
        0,
        "markers are per process"
    );
    store.settle_batch(&[req(50)]).await.expect("unmarked");
    assert_eq!(redis.hget_u64(key, "s"), 750);
    assert_eq!(store.marked("node-a").await.expect("marker"), 7);
}

/// A replay batch resent after a timeout (Redis may have applied it) is applied once.
#[tokio::test]
async fn a_replayed_batch_is_applied_once() {
    use switchyard_data_plane::policy::limits::store::{LimitStore, SettleOp, SettleRequest};
    let dir = temp_dir("limits-replay");
    let redis = RedisServer::start(&dir);
    let store = switchyard_data_plane::policy::limits::redis::RedisStore::new(
        &redis.url(),
        Duration::from_secs(2),
    )
    .expect("store");
    let key = "sy:{k:ns/x}:budget:all";
    let batch = [SettleRequest {
        member: String::new(),
        groups: vec![vec![SettleOp::Spend {
            key: key.into(),
            reserved: 0,
            spent: 700,
            ttl_ms: 0,
        }]],
    }];
    store.replay("node:1:7", &batch).await.expect("replay");
    store.replay("node:1:7", &batch).await.expect("resent");
    assert_eq!(
        redis.hget_u64(key, "s"),
        700,
        "the resend is not counted again"
    );
    store.replay("node:1:8", &batch).await.expect("next batch");
    assert_eq!(redis.hget_u64(key, "s"), 1400);
}
