use super::*;
use crate::error::ErrorKind;
use crate::llm::Estimate;

fn subject(key: Limits, route: Limits, budget: Option<BudgetSpec>) -> Subject<'static> {
    Subject {
        key_id: "ns/k",
        key_limits: key,
        model_limits: Vec::new(),
        budget,
        route_id: "ns/r",
        route_limits: route,
        model: "gpt-4o",
        price: Price {
            input: 2_500_000,
            output: 10_000_000,
            ..Default::default()
        },
        lease: Duration::from_secs(60),
    }
}

const NOW: u64 = 1_795_000_000_123;

#[test]
fn nothing_to_check_means_no_plan_and_no_tokenizing() {
    let s = subject(Limits::default(), Limits::default(), None);
    assert!(plan(&s, NOW, || panic!("estimate must not run")).is_none());
    // Only a request limit: a plan, still no tokenizing.
    let s = subject(
        Limits {
            rpm: 10,
            ..Limits::default()
        },
        Limits::default(),
        None,
    );
    let p = plan(&s, NOW, || panic!("estimate must not run")).expect("plan");
    assert_eq!(p.groups.len(), 1);
    assert_eq!(
        p.groups[0][0].key,
        format!("sy:{{k:ns/k}}:rpm:{}", NOW / 60_000)
    );
}

#[test]
fn key_and_route_counters_live_in_their_own_hash_slots() {
    let s = subject(
        Limits {
            rpm: 10,
            tpm: 1000,
            parallel: 2,
        },
        Limits {
            tpm: 5000,
            ..Limits::default()
        },
        Some(BudgetSpec {
            amount_nanos: 1_000_000_000,
            period: pb::BudgetPeriod::Monthly,
            alert_only: false,
        }),
    );
    let p = plan(&s, NOW, || Estimate {
        input: 100,
        output: 50,
    })
    .expect("plan");
    assert_eq!(p.groups.len(), 2);
    assert!(
        p.groups[0]
            .iter()
            .all(|c| c.key.starts_with("sy:{k:ns/k}:"))
    );
    assert!(
        p.groups[1]
            .iter()
            .all(|c| c.key.starts_with("sy:{r:ns/r}:"))
    );
    let tpm = &p.groups[0][1];
    assert_eq!((tpm.kind, tpm.cost), (CheckKind::Window, 150));
    let budget = p.groups[0].last().expect("budget check");
    assert_eq!(budget.kind, CheckKind::Budget);
    // 100 input at $2.50/M + 50 output at $10/M = $0.00075 = 750,000 nano-dollars.
    assert_eq!(budget.cost, 750_000);
    assert!(budget.key.contains(":spend:"));
}

#[test]
fn headers_report_the_tightest_limit() {
    let mut h = RateHeaders {
        reset_ms: 12_500,
        ..RateHeaders::default()
    };
    RateHeaders::tighten(&mut h.requests, 100, 10);
    RateHeaders::tighten(&mut h.requests, 20, 15);
    RateHeaders::tighten(&mut h.requests, 1000, 1);
    let mut out = HeaderMap::new();
    h.apply(&mut out);
    assert_eq!(out["x-ratelimit-limit-requests"], "20");
    assert_eq!(out["x-ratelimit-remaining-requests"], "5");
    assert_eq!(out["x-ratelimit-reset-requests"], "12.500s");
    assert!(out.get("x-ratelimit-limit-tokens").is_none());
}

#[test]
fn costs_are_exact_in_nano_dollars() {
    let p = Price {
        input: 150_000,
        output: 600_000,
        ..Default::default()
    };
    // One token at $0.15/M is 150 nano-dollars: nothing rounds away.
    assert_eq!(p.cost_nanos(&Usage::new(1, 0)), 150);
    assert_eq!(p.cost_nanos(&Usage::new(1_000_000, 1_000_000)), 750_000_000);
    assert_eq!(Price::default().cost_nanos(&Usage::new(10, 10)), 0);
    // Cache reads and writes at their own prices, or at the input price when unset.
    let cached = Usage {
        input: 1_000_000,
        cache_read: 600_000,
        cache_write: 300_000,
        ..Default::default()
    };
    assert_eq!(p.cost_nanos(&cached), 150_000_000);
    let c = Price {
        cache_read: 15_000,
        cache_write: 187_500,
        ..p
    };
    // 100k uncached at 0.15 + 600k read at 0.015 + 300k written at 0.1875 (per million).
    assert_eq!(c.cost_nanos(&cached), 15_000_000 + 9_000_000 + 56_250_000);
}

/// A shared store that grants every lease in full and fails every admission.
#[derive(Debug)]
struct LeasesOnly;

impl store::LimitStore for LeasesOnly {
    fn admit<'a>(
        &'a self,
        _req: &'a store::AdmitRequest,
    ) -> futures_util::future::BoxFuture<'a, Result<store::AdmitReply, store::StoreError>> {
        Box::pin(std::future::ready(Err(store::StoreError("down".into()))))
    }
    fn settle<'a>(
        &'a self,
        _req: &'a store::SettleRequest,
    ) -> futures_util::future::BoxFuture<'a, Result<(), store::StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn lease<'a>(
        &'a self,
        _now_ms: u64,
        asks: &'a [store::LeaseAsk],
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<store::LeaseGrant>, store::StoreError>>
    {
        let grants = asks
            .iter()
            .map(|a| store::LeaseGrant {
                granted: a.want,
                used: a.want,
            })
            .collect();
        Box::pin(std::future::ready(Ok(grants)))
    }
    fn budget<'a>(
        &'a self,
        _key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(u64, u64), store::StoreError>> {
        Box::pin(std::future::ready(Ok((0, 0))))
    }
    fn shared(&self) -> bool {
        true
    }
}

/// What a lease paid for a request that is then refused (here: the store is down and the
/// limiter fails closed) goes back to the lease.
#[tokio::test]
async fn a_request_refused_after_a_lease_paid_gives_it_back() {
    let metrics = std::sync::Arc::new(crate::telemetry::metrics::Metrics::default());
    let limiter = Limiter::new(
        std::sync::Arc::new(LeasesOnly),
        FailMode::Closed,
        "n".into(),
        1,
        1,
        metrics,
    );
    // The key's limit is leased (1% of 1000 = 10 requests); the route's is too small to be,
    // so every request still asks the store, which fails.
    let s = || {
        subject(
            Limits {
                rpm: 1000,
                ..Limits::default()
            },
            Limits {
                rpm: 100,
                ..Limits::default()
            },
            None,
        )
    };
    let key = format!("sy:{{k:ns/k}}:rpm:{}", now_ms() / 60_000);
    let first = plan(&s(), now_ms(), Estimate::default).expect("plan");
    assert!(limiter.admit(first).await.is_err(), "fails closed");
    for _ in 0..100 {
        if limiter.lease_left(&key).is_some_and(|l| l > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(limiter.lease_left(&key), Some(10), "the lease arrived");
    for _ in 0..3 {
        let p = plan(&s(), now_ms(), Estimate::default).expect("plan");
        let e = limiter.admit(p).await.expect_err("fails closed");
        assert_eq!(e.kind, ErrorKind::LimitsUnavailable);
    }
    assert_eq!(limiter.lease_left(&key), Some(10), "nothing taken was kept");
}
