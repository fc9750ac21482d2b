//! Scenario d: virtual-key auth plus rate limits (RPM, TPM, parallel) and a budget checked on
//! every request, with the counters in a real `redis-server` (pinned with the upstream) and,
//! for comparison, in the gateway's memory. The limits are set high enough never to refuse,
//! so every request pays for the whole check: token estimate, one admission round trip, one
//! settlement.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::{Measured, Proc, free_port, spawn, wait_http, wrk};

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
pub(super) fn start_redis(work: &Path) -> Result<Option<(Proc, String)>> {
    let bin = PathBuf::from("/usr/bin/redis-server");
    if !bin.exists() {
        return Ok(None);
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
    )?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Some((p, format!("redis://127.0.0.1:{port}"))))
}

/// A gateway on the config in `work/<config>`, pinned to CPU 0 with one worker; ready means
/// its config (and any BPE table it needs) is loaded. Logs to `gateway-<name>.log`.
pub(super) fn start_gateway(
    bin: &Path,
    work: &Path,
    config: &str,
    name: &str,
    extra: &[String],
) -> Result<(Proc, String)> {
    start_gateway_admin(bin, work, config, name, extra).map(|(p, url, _)| (p, url))
}

/// [`start_gateway`], also returning the admin URL.
pub(super) fn start_gateway_admin(
    bin: &Path,
    work: &Path,
    config: &str,
    name: &str,
    extra: &[String],
) -> Result<(Proc, String, String)> {
    start_gateway_on(bin, work, config, name, extra, "0", "1")
}

/// [`start_gateway_admin`] on the CPUs `cpus` (taskset's list) with `workers` Tokio workers.
pub(super) fn start_gateway_on(
    bin: &Path,
    work: &Path,
    config: &str,
    name: &str,
    extra: &[String],
    cpus: &str,
    workers: &str,
) -> Result<(Proc, String, String)> {
    let (api, admin) = (free_port(), free_port());
    let mut args = vec![
        "--config".to_owned(),
        work.join(config).display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{api}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin}"),
    ];
    args.extend_from_slice(extra);
    let p = spawn(
        "switchyard-pinned",
        Some(cpus),
        &bin.join("switchyard-data-plane"),
        &args,
        &[("TOKIO_WORKER_THREADS", workers), ("RUST_LOG", "warn")],
        &work.join(format!("gateway-{name}.log")),
    )?;
    wait_http(
        &format!("http://127.0.0.1:{admin}/readyz"),
        Duration::from_secs(20),
    )?;
    Ok((
        p,
        format!("http://127.0.0.1:{api}/v1/chat/completions"),
        format!("http://127.0.0.1:{admin}"),
    ))
}

/// The upstream scenario d's gateways call, and (c=1 p50, c=32 req/s) of the direct path to it.
pub(super) struct Upstream<'a> {
    pub(super) url: &'a str,
    /// "nginx" or "mock".
    pub(super) name: &'a str,
    pub(super) direct: (f64, f64),
}

/// Runs scenario d on two gateways with the limits config: one counting in Redis, one in
/// memory, both calling `upstream` (nginx when installed). `None` without Redis.
pub(super) fn run(
    bin: &Path,
    work: &Path,
    upstream: &Upstream<'_>,
    duration: Duration,
    body: &str,
) -> Result<Option<Measured>> {
    let (mock, direct) = (upstream.url, upstream.direct);
    let direct_name = format!("{} direct", upstream.name);
    let Some((_redis, redis_url)) = start_redis(work)? else {
        return Ok(None);
    };
    let dir = work.join("config-limits");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.yaml"), super::bench_config(mock))?;
    std::fs::write(dir.join("limits.yaml"), config(mock))?;
    let auth = format!("Bearer {LIMITED_KEY}");
    let headers = [("Authorization", auth.as_str())];
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    for (name, extra) in [
        ("redis", vec!["--redis-url".to_owned(), redis_url]),
        ("memory", Vec::new()),
    ] {
        let (gw, url) = start_gateway(bin, work, "config-limits", name, &extra)?;
        rss.push(super::rss_kib(gw.pid()).unwrap_or(0));
        for c in [1u32, 32] {
            let r = wrk(&url, c, duration, &headers, body, work)?;
            rows.push((format!("d: limits+budget {name} c={c}"), r));
        }
    }
    let find = |name: &str| super::row(&rows, name);
    let (r1, r32, m1, m32) = (
        find("d: limits+budget redis c=1"),
        find("d: limits+budget redis c=32"),
        find("d: limits+budget memory c=1"),
        find("d: limits+budget memory c=32"),
    );
    let summary = format!(
        "auth + RPM/TPM/parallel limits on key and route + monthly budget, every request, upstream {}: Redis c=1 p50 {:.0} us ({:.0} us over {direct_name}), c=32 {:.0} req/s ({:.0}% of {direct_name}); in memory c=1 p50 {:.0} us ({:.0} us over {direct_name}), c=32 {:.0} req/s ({:.0}% of {direct_name}); errors {}; idle RSS with the o200k BPE table loaded {:.1} MB",
        upstream.name,
        r1.p50_us,
        r1.p50_us - direct.0,
        r32.rps,
        100.0 * r32.rps / direct.1.max(1.0),
        m1.p50_us,
        m1.p50_us - direct.0,
        m32.rps,
        100.0 * m32.rps / direct.1.max(1.0),
        r1.errors + r32.errors + m1.errors + m32.errors,
        rss.first().copied().unwrap_or(0) as f64 / 1024.0,
    );
    // Issue 25's target, against the faster of the two direct paths.
    let share = 100.0 * r32.rps / direct.1.max(1.0);
    let targets = vec![(
        format!("Redis limits + budget: c=32 >= 35% of {direct_name}"),
        format!("{share:.0}%"),
        share >= 35.0,
    )];
    Ok(Some(Measured {
        rows,
        summary,
        targets,
    }))
}
