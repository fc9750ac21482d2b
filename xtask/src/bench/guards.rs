//! Scenario h: a PII guardrail (every built-in entity, `Redact`, request and response phase)
//! on a route of its own, against the same route without it, on the same gateway: throughput
//! at c=32, time to first token of a 64-chunk stream (the response phase decodes, redacts and
//! renders every event), and one 1 MB prompt through the request phase.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::{Measured, stream_timing, wrk};

/// The guarded route and its guardrail, appended to the bench config.
pub(super) const CONFIG: &str = "---\napiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: bench-guarded}\nspec: {models: [bench-guarded], backends: [{pool: mock, model: mock-gpt}]}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: Guardrail\nmetadata: {name: bench-pii}\nspec:\n  targets: {routes: [bench-guarded]}\n  phases: [Request, Response]\n  pii: {entities: [Email, Phone, CreditCard, Ssn, Iban, IpAddress, Secret], action: Redact}\n";

pub(super) fn run(
    rt: &tokio::runtime::Runtime,
    gateway: &str,
    auth: &str,
    duration: Duration,
    body: &str,
    dir: &Path,
) -> Result<Measured> {
    let guarded = body.replace("\"model\":\"bench\"", "\"model\":\"bench-guarded\"");
    let hdr = [("Authorization", auth)];
    let plain = wrk(gateway, 32, duration, &hdr, body, dir)?;
    let on = wrk(gateway, 32, duration, &hdr, &guarded, dir)?;
    let (ttft_plain, gap_plain) = stream_timing(gateway, Some(auth), 200, 64, "bench")?;
    let (ttft_on, gap_on) = stream_timing(gateway, Some(auth), 200, 64, "bench-guarded")?;
    let big = rt.block_on(one_mb_prompt(gateway, auth))?;
    let cost = if plain.rps > 0.0 {
        (1.0 - on.rps / plain.rps) * 100.0
    } else {
        0.0
    };
    let summary = format!(
        "PII guardrail (7 entities, Redact, both phases): c=32 {:.0} req/s against {:.0} without ({cost:.1}% less), p50 {:.0} us against {:.0} us; stream TTFT p50 {ttft_on:.0} us against {ttft_plain:.0} us (+{:.0} us), time per chunk after the first {gap_on:.1} us against {gap_plain:.1} us; a 1 MB prompt through the request phase in {:.1} ms",
        on.rps,
        plain.rps,
        on.p50_us,
        plain.p50_us,
        ttft_on - ttft_plain,
        big.as_secs_f64() * 1e3,
    );
    Ok(Measured {
        rows: vec![
            ("h: chat c=32, no guardrail".into(), plain),
            ("h: chat c=32, PII guardrail".into(), on),
        ],
        summary,
        targets: Vec::new(),
    })
}

/// One request whose prompt is 1 MB of text with personal data sprinkled in: the request
/// phase scans (and redacts) all of it. Returns how long the whole request took.
async fn one_mb_prompt(gateway: &str, auth: &str) -> Result<Duration> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let line = "Contact jane.doe@example.com or +44 20 7946 0958 about card 4111 1111 1111 1111 from 10.0.0.1. ";
    let text = line.repeat((1 << 20) / line.len());
    let body = serde_json::json!({"model": "bench-guarded", "max_tokens": 16,
        "messages": [{"role": "user", "content": text}]})
    .to_string();
    let req = http::Request::post(gateway)
        .header("content-type", "application/json")
        .header("authorization", auth)
        .body(Full::new(Bytes::from(body)))?;
    let started = Instant::now();
    let resp = client.request(req).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await?;
    ensure!(status.is_success(), "the 1 MB prompt got {status}");
    Ok(started.elapsed())
}
