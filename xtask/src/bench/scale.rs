//! Scenario f: config scale. 1k routes and 100k virtual keys: standalone load, compile and
//! apply; then a control plane with two data planes: cold start, one key change reaching
//! both, and a fleet data plane's memory.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::{free_port, rss_kib, spawn, wait_http};

/// 1k routes and 100k keys (one Secret holding every key).
fn scale_config(dir: &Path, routes: usize, keys: usize) -> Result<()> {
    let mut y = String::with_capacity(keys * 200);
    y.push_str("apiVersion: switchyard.dev/v1alpha1\nkind: ProviderPool\nmetadata: {name: mock}\nspec: {provider: mock, models: [{name: demo}]}\n");
    for r in 0..routes {
        let _ = write!(
            y,
            "---\napiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: r{r}}}\nspec: {{models: [m{r}], backends: [{{pool: mock}}]}}\n"
        );
    }
    y.push_str("---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData:\n");
    for k in 0..keys {
        let _ = writeln!(y, "  k{k}: sk-scale-{k:08}");
    }
    for k in 1..keys {
        let _ = write!(
            y,
            "---\napiVersion: switchyard.dev/v1alpha1\nkind: VirtualKey\nmetadata: {{name: k{k}}}\nspec: {{secretRef: {{name: keys, key: k{k}}}}}\n"
        );
    }
    std::fs::write(dir.join("scale.yaml"), y)?;
    std::fs::write(dir.join("one-key.yaml"), one_key(false))?;
    Ok(())
}

/// Key k0 in a file of its own, so changing it is a one-key change.
fn one_key(disabled: bool) -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: VirtualKey\nmetadata: {{name: k0}}\nspec: {{secretRef: {{name: keys, key: k0}}, disabled: {disabled}}}\n"
    )
}

type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn status_with_key(client: &PlainClient, url: &str, key: &str) -> u16 {
    let body = json!({"model": "m0", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let Ok(req) = http::Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body)))
    else {
        return 0;
    };
    match client.request(req).await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.into_body().collect().await;
            s
        }
        Err(_) => 0,
    }
}

/// Fleet: control plane + two data planes on the scale config. Returns (seconds until both
/// are ready, milliseconds for a one-key change to reach both, the first data plane's RSS in
/// KiB after the change).
fn fleet_scale(bin: &Path, work: &Path, scale_dir: &Path) -> Result<(f64, f64, u64)> {
    let grpc = free_port();
    let started = Instant::now();
    let _cp = spawn(
        "cp",
        Some("0"),
        &bin.join("switchyard-control-plane"),
        &[
            format!("--source=dir:{}", scale_dir.display()),
            format!("--grpc-listen=127.0.0.1:{grpc}"),
            format!("--admin-listen=127.0.0.1:{}", free_port()),
            "--insecure-plaintext".into(),
            "--poll-interval=20ms".into(),
        ],
        &[("RUST_LOG", "warn")],
        &work.join("scale-cp.log"),
    )?;
    let mut dps = Vec::new();
    let mut apis = Vec::new();
    for i in 0..2 {
        let (api, admin) = (free_port(), free_port());
        dps.push(spawn(
            "dp",
            Some("1"),
            &bin.join("switchyard-data-plane"),
            &[
                format!("--control-plane=http://127.0.0.1:{grpc}"),
                "--insecure-plaintext".into(),
                format!("--node-id=bench-{i}"),
                format!("--listen=127.0.0.1:{api}"),
                format!("--admin-listen=127.0.0.1:{admin}"),
            ],
            &[("RUST_LOG", "warn")],
            &work.join(format!("scale-dp{i}.log")),
        )?);
        apis.push((
            format!("http://127.0.0.1:{api}/v1/chat/completions"),
            format!("http://127.0.0.1:{admin}/readyz"),
        ));
    }
    for (_, ready) in &apis {
        wait_http(ready, Duration::from_secs(180))?;
    }
    let ready_s = started.elapsed().as_secs_f64();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let change_ms = rt.block_on(async {
        let client: PlainClient =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        for (api, _) in &apis {
            if status_with_key(&client, api, "sk-scale-00000000").await != 200 {
                bail!("key k0 does not work before the change");
            }
        }
        std::fs::write(scale_dir.join("one-key.yaml"), one_key(true))?;
        let changed = Instant::now();
        let deadline = changed + Duration::from_secs(30);
        let mut pending: Vec<&String> = apis.iter().map(|(a, _)| a).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for api in pending {
                if status_with_key(&client, api, "sk-scale-00000000").await != 401 {
                    still.push(api);
                }
            }
            pending = still;
            if Instant::now() > deadline {
                bail!("the changed key did not reach every data plane in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(changed.elapsed().as_secs_f64() * 1000.0)
    })?;
    let rss = dps.first().and_then(|p| rss_kib(p.pid())).unwrap_or(0);
    drop(dps);
    Ok((ready_s, change_ms, rss))
}

/// Results of the config-scale scenario.
pub(crate) struct Scale {
    pub(crate) routes: usize,
    pub(crate) keys: usize,
    pub(crate) standalone_s: f64,
    pub(crate) scale_rss: u64,
    pub(crate) fleet_ready_s: f64,
    pub(crate) change_ms: f64,
    /// RSS of a fleet data plane after the change (KiB).
    pub(crate) fleet_rss: u64,
}

/// 1k routes and 100k keys (10 routes and 1k keys with `smoke`): standalone load, compile
/// and apply; then a control plane with two data planes: cold start and one key change.
pub(crate) fn config_scale(bin: &Path, work: &Path, smoke: bool) -> Result<Scale> {
    let (routes, keys) = if smoke { (10, 1000) } else { (1000, 100_000) };
    let scale_dir = work.join("scale");
    let _ = std::fs::remove_dir_all(&scale_dir);
    std::fs::create_dir_all(&scale_dir)?;
    scale_config(&scale_dir, routes, keys)?;
    let admin = free_port();
    let started = Instant::now();
    let sp = spawn(
        "scale",
        Some("0"),
        &bin.join("switchyard-data-plane"),
        &[
            "--config".into(),
            scale_dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin}"),
        ],
        &[("RUST_LOG", "warn")],
        &work.join("scale.log"),
    )?;
    wait_http(
        &format!("http://127.0.0.1:{admin}/readyz"),
        Duration::from_secs(120),
    )?;
    let standalone_s = started.elapsed().as_secs_f64();
    let scale_rss = rss_kib(sp.pid()).unwrap_or(0);
    drop(sp);
    println!(
        "f: {routes} routes + {keys} keys: standalone load+compile+apply {standalone_s:.2} s, data-plane RSS {:.1} MB",
        scale_rss as f64 / 1024.0
    );
    let (fleet_ready_s, change_ms, fleet_rss) = fleet_scale(bin, work, &scale_dir)?;
    println!(
        "f: fleet (control plane + 2 data planes): both ready after {fleet_ready_s:.2} s; one changed key reached both in {change_ms:.0} ms; data-plane RSS {:.1} MB",
        fleet_rss as f64 / 1024.0
    );
    Ok(Scale {
        routes,
        keys,
        standalone_s,
        scale_rss,
        fleet_ready_s,
        change_ms,
        fleet_rss,
    })
}
