//! The limit store contract, run with the same bodies against the in-memory store and a real
//! `redis-server`.

use std::time::Duration;

use switchyard_data_plane::policy::limits::memory::MemoryStore;
use switchyard_data_plane::policy::limits::redis::RedisStore;
use switchyard_data_plane::policy::limits::store::{
    AdmitReply, AdmitRequest, Check, CheckKind, LeaseAsk, LimitStore, SettleOp, SettleRequest,
};
use switchyard_tests::redis::{RedisCluster, RedisServer};

fn now() -> u64 {
    switchyard_data_plane::policy::limits::now_ms()
}

fn check(key: &str, kind: CheckKind, limit: u64, cost: u64) -> Check {
    Check {
        key: key.into(),
        kind,
        limit,
        cost,
        ttl_ms: 60_000,
        leased: None,
    }
}

fn req(member: &str, groups: Vec<Vec<Check>>) -> AdmitRequest {
    AdmitRequest {
        now_ms: now(),
        member: member.into(),
        groups,
    }
}

async fn admitted(s: &dyn LimitStore, r: &AdmitRequest) -> bool {
    match s.admit(r).await.expect("store answers") {
        AdmitReply::Admitted(_) => true,
        AdmitReply::Denied { .. } => false,
    }
}

async fn window_counts_exactly(s: &dyn LimitStore, p: &str) {
    let key = format!("{p}:rpm");
    let mut n = 0;
    for i in 0..8 {
        if admitted(
            s,
            &req(
                &format!("m{i}"),
                vec![vec![check(&key, CheckKind::Window, 5, 1)]],
            ),
        )
        .await
        {
            n += 1;
        }
    }
    assert_eq!(n, 5, "a limit of 5 admits exactly 5");
    let denied = s
        .admit(&req("x", vec![vec![check(&key, CheckKind::Window, 5, 1)]]))
        .await
        .expect("answer");
    assert_eq!(
        denied,
        AdmitReply::Denied {
            group: 0,
            check: 0,
            used: 5
        }
    );
    // Token windows: a request larger than what is left is refused; corrections move usage.
    let tkey = format!("{p}:tpm");
    let t = |cost| vec![vec![check(&tkey, CheckKind::Window, 100, cost)]];
    assert!(admitted(s, &req("a", t(60))).await);
    assert!(!admitted(s, &req("b", t(50))).await, "60 + 50 > 100");
    let fix = SettleRequest {
        member: "a".into(),
        groups: vec![vec![SettleOp::Adjust {
            key: tkey.clone(),
            delta: -30,
        }]],
    };
    s.settle(&fix).await.expect("settle");
    let nothing = SettleRequest {
        member: "a".into(),
        groups: vec![Vec::new()],
    };
    s.settle(&nothing)
        .await
        .expect("an empty settlement is a no-op");
    assert!(
        admitted(s, &req("b", t(50))).await,
        "30 + 50 <= 100 after the correction"
    );
    let Ok(AdmitReply::Admitted(used)) = s.admit(&req("c", t(20))).await else {
        panic!("20 more fit exactly");
    };
    assert_eq!(used, vec![vec![100]]);
}

/// `p` and `q` carry different hash tags: on a cluster the groups live in different slots.
async fn groups_are_all_or_nothing(s: &dyn LimitStore, p: &str, q: &str) {
    let (a, b) = (format!("{p}:a"), format!("{q}:b"));
    let both = |limit_b| {
        vec![
            vec![check(&a, CheckKind::Window, 10, 1)],
            vec![check(&b, CheckKind::Window, limit_b, 1)],
        ]
    };
    assert!(admitted(s, &req("1", both(1))).await);
    let r = s.admit(&req("2", both(1))).await.expect("answer");
    assert_eq!(
        r,
        AdmitReply::Denied {
            group: 1,
            check: 0,
            used: 1
        }
    );
    // The denied request did not keep its charge on group 0.
    let Ok(AdmitReply::Admitted(used)) = s
        .admit(&req("3", vec![vec![check(&a, CheckKind::Window, 10, 1)]]))
        .await
    else {
        panic!("group a has room");
    };
    assert_eq!(used, vec![vec![2]]);
}

async fn parallel_leases(s: &dyn LimitStore, p: &str) {
    let key = format!("{p}:par");
    let lease = |ttl_ms| {
        vec![vec![Check {
            ttl_ms,
            ..check(&key, CheckKind::Parallel, 2, 1)
        }]]
    };
    assert!(admitted(s, &req("one", lease(60_000))).await);
    assert!(admitted(s, &req("two", lease(300))).await);
    assert!(!admitted(s, &req("three", lease(60_000))).await);
    let release = SettleRequest {
        member: "one".into(),
        groups: vec![vec![SettleOp::Release { key: key.clone() }]],
    };
    s.settle(&release).await.expect("settle");
    assert!(
        admitted(s, &req("three", lease(60_000))).await,
        "released slot is free"
    );
    assert!(!admitted(s, &req("four", lease(60_000))).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        admitted(s, &req("four", lease(60_000))).await,
        "an expired lease (a proxy that died) frees its slot"
    );
}

async fn budgets_reserve_and_settle(s: &dyn LimitStore, p: &str) {
    let key = format!("{p}:spend");
    let b = |kind| vec![vec![check(&key, kind, 1000, 400)]];
    // Admits while spent + reserved < 1000: 0, 400, 800 -> three in flight, the fourth waits.
    for m in ["1", "2", "3"] {
        assert!(admitted(s, &req(m, b(CheckKind::Budget))).await, "{m}");
    }
    assert!(!admitted(s, &req("4", b(CheckKind::Budget))).await);
    assert_eq!(s.budget(&key).await.expect("budget"), (0, 1200));
    for m in ["1", "2", "3"] {
        let settle = SettleRequest {
            member: m.into(),
            groups: vec![vec![SettleOp::Spend {
                key: key.clone(),
                reserved: 400,
                spent: 100,
                ttl_ms: 60_000,
            }]],
        };
        s.settle(&settle).await.expect("settle");
    }
    assert_eq!(s.budget(&key).await.expect("budget"), (300, 0));
    assert!(admitted(s, &req("5", b(CheckKind::Budget))).await);
    // Alert-only budgets never refuse, but still count.
    let akey = format!("{p}:alert");
    for m in 0..5 {
        assert!(
            admitted(
                s,
                &req(
                    &m.to_string(),
                    vec![vec![check(&akey, CheckKind::BudgetAlert, 10, 400)]]
                )
            )
            .await
        );
    }
    assert_eq!(s.budget(&akey).await.expect("budget"), (0, 2000));
}

/// The whole contract; `p` and `q` are key prefixes with different hash tags.
/// What a proxy's lease paid is neither checked nor charged again; the rest is.
async fn leased_checks_charge_the_rest(s: &dyn LimitStore, p: &str) {
    let key = format!("{p}:tpm");
    let paid = |cost, leased| {
        let mut c = check(&key, CheckKind::Window, 100, cost);
        c.leased = Some(leased);
        vec![vec![c]]
    };
    assert!(
        admitted(s, &req("a", paid(500, 500))).await,
        "paid whole: not checked"
    );
    assert!(admitted(s, &req("b", paid(150, 60))).await, "90 charged");
    let denied = s
        .admit(&req(
            "c",
            vec![vec![check(&key, CheckKind::Window, 100, 20)]],
        ))
        .await
        .expect("answer");
    assert_eq!(
        denied,
        AdmitReply::Denied {
            group: 0,
            check: 0,
            used: 90
        },
        "only the unpaid 90 were counted"
    );
    let bkey = format!("{p}:budget");
    let mut b = check(&bkey, CheckKind::Budget, 1000, 300);
    b.leased = Some(100);
    assert!(admitted(s, &req("d", vec![vec![b]])).await);
    assert_eq!(s.budget(&bkey).await.expect("budget"), (0, 200));
}

async fn contract(s: &dyn LimitStore, p: &str, q: &str) {
    leased_checks_charge_the_rest(s, &format!("{p}:l")).await;
    window_counts_exactly(s, &format!("{p}:w")).await;
    groups_are_all_or_nothing(s, &format!("{p}:g"), &format!("{q}:g")).await;
    parallel_leases(s, &format!("{p}:p")).await;
    budgets_reserve_and_settle(s, &format!("{p}:b")).await;
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(&MemoryStore::new(), "sy:{t:mem}", "sy:{t:mem2}").await;
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let dir = std::env::temp_dir().join(format!("sy-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = RedisServer::start(&dir);
    let store = RedisStore::new(&redis.url(), Duration::from_secs(2)).expect("store");
    contract(&store, "sy:{t:redis}", "sy:{t:redis2}").await;
}

/// A lease takes the smaller of what was asked and its share of what is left, and charges it
/// like requests would; leased parallel slots are named members that expire unless refreshed.
#[tokio::test]
async fn redis_leases_take_a_share_of_what_is_left() {
    let dir = std::env::temp_dir().join(format!("sy-store-lease-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = RedisServer::start(&dir);
    let s = RedisStore::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let ask = |key: &str, kind, limit, want, share| LeaseAsk {
        key: key.into(),
        kind,
        limit,
        want,
        share,
        ttl_ms: 60_000,
        slots: match kind {
            CheckKind::Parallel => (0..want).map(|i| format!("dp-0:lease:{i}")).collect(),
            _ => Vec::new(),
        },
    };
    let w = "sy:{k:l}:rpm";
    let g = s
        .lease(now(), &[ask(w, CheckKind::Window, 1000, 100, 4)])
        .await
        .expect("lease");
    assert_eq!((g[0].granted, g[0].used), (100, 100));
    assert!(
        admitted(
            &s,
            &req("a", vec![vec![check(w, CheckKind::Window, 1000, 800)]])
        )
        .await
    );
    let g = s
        .lease(now(), &[ask(w, CheckKind::Window, 1000, 100, 4)])
        .await
        .expect("lease");
    assert_eq!(
        (g[0].granted, g[0].used),
        (25, 925),
        "a quarter of the 100 left"
    );
    let g = s
        .lease(now(), &[ask(w, CheckKind::Window, 1000, 100, 100)])
        .await
        .expect("lease");
    assert_eq!(g[0].granted, 0, "too little left to lease");
    assert_eq!(redis.query::<u64>(&["GET", w]), Some(925));

    let b = "sy:{k:l}:budget";
    let g = s
        .lease(
            now(),
            &[
                ask(b, CheckKind::Budget, 1 << 60, 1 << 50, 2),
                ask("sy:{k:l}:par", CheckKind::Parallel, 10, 4, 2),
            ],
        )
        .await
        .expect("lease");
    assert_eq!(g[0].granted, 1 << 50, "large amounts stay exact");
    assert_eq!(s.budget(b).await.expect("budget"), (0, 1 << 50));
    assert_eq!(g[1].granted, 4);
    assert_eq!(redis.query::<u64>(&["ZCARD", "sy:{k:l}:par"]), Some(4));
    let slots: Vec<String> = (0..4).map(|i| format!("dp-0:lease:{i}")).collect();
    s.refresh_slots("sy:{k:l}:par", &slots, now() + 3_600_000)
        .await
        .expect("refresh");
    let score: Option<f64> = redis.query(&["ZSCORE", "sy:{k:l}:par", "dp-0:lease:0"]);
    assert!(
        score.is_some_and(|s| s as u64 > now() + 3_000_000),
        "refreshed"
    );
}

#[tokio::test]
async fn redis_cluster_store_keeps_the_contract() {
    let dir = std::env::temp_dir().join(format!("sy-store-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cluster = RedisCluster::start(&dir);
    let seeds: Vec<String> = cluster.seeds().split(',').map(str::to_owned).collect();
    let store = RedisStore::cluster(&seeds, Duration::from_secs(2)).expect("store");
    // Tags in different slots ({k:a} and {r:b} hash apart), so a request's groups cross
    // nodes: no CROSSSLOT errors, and the groups are still all or nothing.
    contract(&store, "sy:{k:a}", "sy:{r:b}").await;
    // Keys really were spread over the nodes.
    let holders = cluster.nodes.iter().filter(|n| n.dbsize() > 0).count();
    assert!(holders >= 2, "keys landed on {holders} node(s)");
}

#[tokio::test]
async fn redis_store_reports_errors_and_recovers() {
    let dir = std::env::temp_dir().join(format!("sy-store-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut redis = RedisServer::start(&dir);
    let store = RedisStore::new(&redis.url(), Duration::from_millis(300)).expect("store");
    let key = "sy:{t:down}:rpm";
    let r = req("m", vec![vec![check(key, CheckKind::Window, 100, 1)]]);
    assert!(admitted(&store, &r).await);
    redis.kill();
    let started = std::time::Instant::now();
    let err = store.admit(&r).await.expect_err("Redis is down");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the timeout, took {:?}",
        started.elapsed()
    );
    assert!(!err.0.contains("redis://"), "no URL in errors: {err}");
    redis.restart();
    // The connection manager reconnects by itself; the script cache is empty after a
    // restart, so this also covers reloading the scripts.
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(AdmitReply::Admitted(used)) = store.admit(&r).await {
            assert_eq!(
                used,
                vec![vec![2]],
                "the counter survived the restart (AOF)"
            );
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "store never recovered");
}

#[test]
fn a_bad_redis_url_is_refused_without_echoing_it() {
    for url in ["not a url", "http://user:hunter2@host:6379"] {
        let e = RedisStore::new(url, Duration::from_secs(1)).expect_err("refused");
        assert!(e.0.contains("invalid Redis URL"), "{e}");
        assert!(!e.0.contains("hunter2"), "no secrets in errors: {e}");
    }
}
