//! Shared by the limits suites: the limits configuration, three data planes on one Redis,
//! and bursts of concurrent clients.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::procs::Proc;
use switchyard_tests::redis::RedisServer;

use super::*;

pub const RPM_KEY: &str = "sk-limits-rpm-0001";
pub const BUDGET_KEY: &str = "sk-limits-budget-01";
pub const TPM_KEY: &str = "sk-limits-tpm-0001";
pub const PAR_KEY: &str = "sk-limits-par-0001";
pub const OUTAGE_KEY: &str = "sk-limits-outage-01";
pub const TEAM_KEY: &str = "sk-limits-team-0001";
pub const ALERT_KEY: &str = "sk-limits-alert-001";
pub const CACHE_KEY: &str = "sk-limits-cache-001";
pub const LEASED_KEY: &str = "sk-limits-leased-01";
pub const BUDGET_ONLY_KEY: &str = "sk-limits-leased-02";

pub fn body2() -> Value {
    json!({"model": "priced", "max_tokens": 10, "messages": [{"role": "user", "content": "a budget only"}]})
}

/// Price of the `priced` pool: $1000 per million tokens, i.e. $0.001 (1,000,000
/// nano-dollars) per token.
pub const NANOS_PER_TOKEN: u64 = 1_000_000;

pub fn limits_config() -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: limit-keys}}
stringData:
  rpm: {RPM_KEY}
  budget: {BUDGET_KEY}
  tpm: {TPM_KEY}
  par: {PAR_KEY}
  outage: {OUTAGE_KEY}
  team: {TEAM_KEY}
  alert: {ALERT_KEY}
  cache: {CACHE_KEY}
  leased: {LEASED_KEY}
  leased-budget: {BUDGET_ONLY_KEY}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: cached}}
spec:
  provider: anthropic
  endpoints: [{{url: "{{MOCK}}", credentialSecretRef: {{name: upstream-cred, key: api-key}}}}]
  models: [{{name: claude-cache, inputPricePerMillion: "3", outputPricePerMillion: "15",
            cacheReadPricePerMillion: "0.30", cacheWritePricePerMillion: "3.75"}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: cached}}
spec: {{models: [cached], backends: [{{pool: cached, model: claude-cache}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: cache}}
spec: {{secretRef: {{name: limit-keys, key: cache}}, budget: {{amount: "100", period: Monthly}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: priced}}
spec:
  provider: mock
  models: [{{name: priced, inputPricePerMillion: "1000", outputPricePerMillion: "1000"}}]
  mock: {{completionTokens: 10}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: slow}}
spec:
  provider: mock
  models: [{{name: slow}}]
  mock: {{latency: 400ms}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: priced}}
spec:
  models: [priced]
  backends: [{{pool: priced}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: slow}}
spec:
  models: [slow]
  backends: [{{pool: slow}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: team-only}}
spec:
  models: [team-demo]
  backends: [{{pool: builtin, model: demo}}]
  keySelector: {{matchLabels: {{team: blue}}}}
  limits: {{requestsPerMinute: 4}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: rpm}}
spec:
  secretRef: {{name: limit-keys, key: rpm}}
  limits: {{requestsPerMinute: 150}}
  modelLimits: [{{model: "cha*", limits: {{requestsPerMinute: 2}}}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: budget}}
spec:
  secretRef: {{name: limit-keys, key: budget}}
  budget: {{amount: "2", period: Daily}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: tpm}}
spec:
  secretRef: {{name: limit-keys, key: tpm}}
  limits: {{tokensPerMinute: 1000}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: par}}
spec:
  secretRef: {{name: limit-keys, key: par}}
  limits: {{maxParallelRequests: 2}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: outage}}
spec:
  secretRef: {{name: limit-keys, key: outage}}
  limits: {{requestsPerMinute: 100000}}
  budget: {{amount: "1000", period: None}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: leased}}
spec:
  secretRef: {{name: limit-keys, key: leased}}
  limits: {{requestsPerMinute: 1000, maxParallelRequests: 1000}}
  budget: {{amount: "1000", period: None}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: leased-budget}}
spec:
  secretRef: {{name: limit-keys, key: leased-budget}}
  budget: {{amount: "1000", period: None}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: alert}}
spec:
  secretRef: {{name: limit-keys, key: alert}}
  budget: {{amount: "0.05", period: Weekly, action: Alert}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: team, labels: {{team: blue}}}}
spec:
  secretRef: {{name: limit-keys, key: team}}
  allowedRoutes: [team-*]
"#
    )
}

pub struct Env {
    pub dir: PathBuf,
    pub redis: RedisServer,
    pub _mock: Proc,
    pub dps: Vec<(Proc, String, String)>,
}

/// The mock upstream, a Redis, and `n` data planes on one config directory and one Redis.
pub async fn env(tag: &str, n: usize, extra: &[&str]) -> Env {
    let dir = temp_dir(tag);
    let (mock, mock_url) = start_mock(&dir);
    let redis = RedisServer::start(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock_url)).expect("write");
    std::fs::write(
        cfg.join("limits.yaml"),
        limits_config().replace("{MOCK}", &mock_url),
    )
    .expect("write");
    let url = redis.url();
    let mut dps = Vec::new();
    for i in 0..n {
        let node = format!("dp-{i}");
        let mut args = vec!["--redis-url", &url, "--node-id", &node];
        // Counting, not timeouts, is under test here: a generous bound keeps a loaded 2-core
        // machine from tipping a proxy into fail-open mid-burst (the outage test sets its own).
        if !extra.contains(&"--redis-timeout") {
            args.extend(["--redis-timeout", "2s"]);
        }
        args.extend_from_slice(extra);
        dps.push(start_standalone(&cfg, &args, &dir));
    }
    wait_up(&format!("{mock_url}/_mock/requests")).await;
    for (_, _, admin) in &dps {
        wait_ready(admin).await;
    }
    Env {
        dir,
        redis,
        _mock: mock,
        dps,
    }
}

impl Env {
    pub fn api(&self, i: usize) -> String {
        format!("{}/v1/chat/completions", self.dps[i % self.dps.len()].1)
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.dps.len()).map(|i| self.api(i)).collect()
    }
}

/// Waits until the current clock minute has at least `secs` left, so a burst of requests
/// falls in one fixed window.
pub async fn start_of_window(secs: u64) {
    let in_minute = switchyard_data_plane::policy::limits::now_ms() / 1000 % 60;
    if 60 - in_minute < secs {
        tokio::time::sleep(Duration::from_secs(60 - in_minute)).await;
    }
}

/// Fires `total` requests from `clients` concurrent clients spread over the data planes;
/// returns (status, headers, body) of each.
pub async fn burst(
    urls: &[String],
    key: &'static str,
    body: Value,
    clients: usize,
    total: usize,
) -> Vec<(u16, reqwest::header::HeaderMap, Value)> {
    let next = Arc::new(AtomicU64::new(0));
    let urls = urls.to_vec();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (next, urls, body) = (next.clone(), urls.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= total {
                    return out;
                }
                out.push(post(&urls[(c + i) % urls.len()], Some(key), &body).await);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}
