//! Scenario g: a pool of two upstream endpoints (two mock processes, pinned with the others)
//! where one starts failing 30% of its requests with a 500. Measured at c=32 with both
//! healthy, then with the failures, on a route with the default retries and on one without:
//! what clients see (error rate) and what it costs them (latency over the healthy run).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{KEY, Measured, Proc, WrkResult, free_port, spawn, wait_http, wrk};

fn config(a: &str, b: &str) -> String {
    format!(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: pair}}
spec:
  provider: openai
  endpoints:
  - {{url: "{a}/v1", credentialSecretRef: {{name: bench, key: upstream}}}}
  - {{url: "{b}/v1", credentialSecretRef: {{name: bench, key: upstream}}}}
  models: [{{name: mock-gpt}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: pair}}
spec: {{models: [pair], backends: [{{pool: pair, model: mock-gpt}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: pair-no-retries}}
spec: {{models: [pair-no-retries], backends: [{{pool: pair, model: mock-gpt}}], retries: {{attempts: 1}}}}
"#
    )
}

fn start_mock(bin: &Path, work: &Path, name: &str) -> Result<(Proc, String)> {
    let port = free_port();
    let p = spawn(
        "mock",
        Some("1"),
        &bin.join("switchyard-mock-llm"),
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--no-record".into(),
            "--workers".into(),
            "1".into(),
        ],
        &[],
        &work.join(format!("mock-{name}.log")),
    )?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/healthz"), Duration::from_secs(10))?;
    Ok((p, url))
}

/// Sets a mock's faults (`PUT /_mock/faults`), with a bare HTTP/1.1 request.
fn set_faults(url: &str, json: &str) -> Result<()> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).context("connecting to the mock")?;
    write!(
        s,
        "PUT /_mock/faults HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 204"),
        "setting faults on {url} failed: {answer}"
    );
    Ok(())
}

pub(super) fn run(bin: &Path, work: &Path, duration: Duration, body: &str) -> Result<Measured> {
    let (_a, a) = start_mock(bin, work, "a")?;
    let (_b, b) = start_mock(bin, work, "b")?;
    let dir = work.join("config-faults");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.yaml"), super::bench_config(&a))?;
    std::fs::write(dir.join("faults.yaml"), config(&a, &b))?;
    let (api, admin) = (free_port(), free_port());
    let _gw = spawn(
        "switchyard-faults",
        Some("0"),
        &bin.join("switchyard-data-plane"),
        &[
            "--config".into(),
            dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{api}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin}"),
        ],
        &[("TOKIO_WORKER_THREADS", "1"), ("RUST_LOG", "warn")],
        &work.join("gateway-faults.log"),
    )?;
    wait_http(
        &format!("http://127.0.0.1:{admin}/readyz"),
        Duration::from_secs(20),
    )?;
    let url = format!("http://127.0.0.1:{api}/v1/chat/completions");
    let auth = format!("Bearer {KEY}");
    let headers = [("Authorization", auth.as_str())];
    let pair = body.replace("\"model\":\"bench\"", "\"model\":\"pair\"");
    let bare = body.replace("\"model\":\"bench\"", "\"model\":\"pair-no-retries\"");
    let mut rows = Vec::new();
    let healthy = wrk(&url, 32, duration, &headers, &pair, work)?;
    rows.push(("g: 2 endpoints healthy c=32".to_owned(), healthy.clone()));
    set_faults(&b, r#"{"status": 500, "rate": 0.3}"#)?;
    let failing = wrk(&url, 32, duration, &headers, &pair, work)?;
    rows.push(("g: 1 of 2 failing 30% c=32".to_owned(), failing.clone()));
    let unretried = wrk(&url, 32, duration, &headers, &bare, work)?;
    rows.push((
        "g: 1 of 2 failing 30%, no retries c=32".to_owned(),
        unretried.clone(),
    ));
    let rate = |r: &WrkResult| 100.0 * r.errors as f64 / (r.requests.max(1)) as f64;
    let summary = format!(
        "one of two endpoints failing 30% of requests (500), c=32: client errors {:.3}% ({} of {}) with the default retries and outlier detection, {:.1}% with retries off; p50 {:.0} us and p99 {:.0} us, {:+.0} us and {:+.0} us over both healthy ({:.0} req/s healthy, {:.0} req/s failing)",
        rate(&failing),
        failing.errors,
        failing.requests,
        rate(&unretried),
        failing.p50_us,
        failing.p99_us,
        failing.p50_us - healthy.p50_us,
        failing.p99_us - healthy.p99_us,
        healthy.rps,
        failing.rps,
    );
    Ok(Measured {
        rows,
        summary,
        targets: Vec::new(),
    })
}
