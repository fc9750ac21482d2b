//! Scenario d: virtual-key auth plus rate limits (RPM, TPM, parallel) and a budget checked on
//! every request, with the counters in a real `redis-server` (pinned with the upstream) and,
//! for comparison, in the gateway's memory. The limits are set high enough never to refuse,
//! so every request pays for the whole check: token estimate, one admission round trip, one
//! settlement.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::{Proc, WrkResult, free_port, spawn, wait_http, wrk};

pub(super) const LIMITED_KEY: &str = "sk-bench-limited-000001";

/// Extra resources: a priced pool on the same mock upstream (an OpenAI model name, so the
/// estimate runs the real BPE), a route to it, and a key with every kind of limit.
pub(super) fn config(mock: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: bench-limited}}
stringData: {{key: {LIMITED_KEY}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: priced}}
spec:
  provider: openai
  endpoints: [{{url: "{mock}/v1", credentialSecretRef: {{name: bench, key: upstream}}}}]
  models: [{{name: gpt-4o-mini, inputPricePerMillion: "0.15", outputPricePerMillion: "0.60"}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: bench-limited}}
spec:
  models: [bench-limited]
  backends: [{{pool: priced, model: gpt-4o-mini}}]
  limits: {{requestsPerMinute: 1000000000}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: bench-limited}}
spec:
  secretRef: {{name: bench-limited}}
  limits: {{requestsPerMinute: 1000000000, tokensPerMinute: 1000000000000, maxParallelRequests: 100000}}
  budget: {{amount: "1000000000", period: Monthly}}
"#
    )
}

/// A `redis-server` on a free port pinned to CPU 1, if Redis is installed.
pub(super) fn start_redis(work: &Path) -> Option<(Proc, String)> {
    let bin = PathBuf::from("/usr/bin/redis-server");
    if !bin.exists() {
        return None;
    }
    let port = free_port();
    let p = spawn(
        "redis",
        Some("1"),
        &bin,
        &[
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ],
        &[],
        &work.join("redis.log"),
    )
    .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some((p, format!("redis://127.0.0.1:{port}")))
}

/// What scenario d measured.
pub(super) struct Measured {
    pub(super) rows: Vec<(String, WrkResult)>,
    pub(super) summary: String,
}

/// Runs scenario d against `gateway` (started with `--redis-url`) and against a second,
/// in-memory gateway on the same config. `direct` is (c=1 p50, c=32 req/s) of the direct path.
pub(super) fn run(
    bin: &Path,
    work: &Path,
    gateway: &str,
    duration: Duration,
    body: &str,
    direct: (f64, f64),
) -> Result<Measured> {
    let auth = format!("Bearer {LIMITED_KEY}");
    let headers = [("Authorization", auth.as_str())];
    let mut rows = Vec::new();
    for c in [1u32, 32] {
        let r = wrk(gateway, c, duration, &headers, body, work)?;
        rows.push((format!("d: limits+budget redis c={c}"), r));
    }
    let (api, admin) = (free_port(), free_port());
    let mem = spawn(
        "switchyard-memory",
        Some("0"),
        &bin.join("switchyard-data-plane"),
        &[
            "--config".into(),
            work.join("config").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{api}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin}"),
        ],
        &[("TOKIO_WORKER_THREADS", "1"), ("RUST_LOG", "warn")],
        &work.join("gateway-memory.log"),
    )?;
    wait_http(
        &format!("http://127.0.0.1:{admin}/readyz"),
        Duration::from_secs(10),
    )?;
    let url = format!("http://127.0.0.1:{api}/v1/chat/completions");
    for c in [1u32, 32] {
        let r = wrk(&url, c, duration, &headers, body, work)?;
        rows.push((format!("d: limits+budget memory c={c}"), r));
    }
    drop(mem);
    let find = |name: &str| rows.iter().find(|(n, _)| n == name).map(|(_, r)| r.clone());
    let (r1, r32, m1, m32) = (
        find("d: limits+budget redis c=1").unwrap_or_default(),
        find("d: limits+budget redis c=32").unwrap_or_default(),
        find("d: limits+budget memory c=1").unwrap_or_default(),
        find("d: limits+budget memory c=32").unwrap_or_default(),
    );
    let summary = format!(
        "auth + RPM/TPM/parallel limits on key and route + monthly budget, every request: Redis c=1 p50 {:.0} us ({:.0} us over direct), c=32 {:.0} req/s ({:.0}% of direct); in memory c=1 p50 {:.0} us ({:.0} us over direct), c=32 {:.0} req/s ({:.0}% of direct); errors {}",
        r1.p50_us,
        r1.p50_us - direct.0,
        r32.rps,
        100.0 * r32.rps / direct.1.max(1.0),
        m1.p50_us,
        m1.p50_us - direct.0,
        m32.rps,
        100.0 * m32.rps / direct.1.max(1.0),
        r1.errors + r32.errors + m1.errors + m32.errors,
    );
    Ok(Measured { rows, summary })
}
