use super::*;

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
