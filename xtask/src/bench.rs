//! `cargo xtask bench`: the gateway against the direct path to the same mock upstream, in one
//! run, with wrk as the load generator; optional peers (LiteLLM, Portkey). Writes
//! `docs/benchmarks.md`, `docs/benchmarks.json` (raw) and `docs/benchmarks.svg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;

mod audit;
mod cache;
mod faults;
mod guards;
mod harness;
mod limits;
mod nginx;
mod peers;
mod scale;
mod scaling;
mod semantic;
mod tracing;

use harness::{
    Proc, WrkResult, cpu_seconds, free_port, get_text, has_taskset, rss_kib, spawn, stream_timing,
    wait_http, wrk,
};
use scale::{Scale, config_scale};

use peers::{Peer, start_peer};

const KEY: &str = "sk-bench-key-000001";

/// Options of one run.
#[derive(Debug, Clone)]
pub(crate) struct BenchOpts {
    pub(crate) duration: Duration,
    pub(crate) smoke: bool,
    pub(crate) peers: bool,
    pub(crate) release: bool,
    /// One scenario alone (after a and b, except `Scale`), printed, nothing written to docs/.
    pub(crate) only: Option<Only>,
    /// Binaries built before (two trees' builds compared in turn); none: built now.
    pub(crate) bin_dir: Option<PathBuf>,
}

/// The scenarios that run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Only {
    /// f: config scale.
    Scale,
    /// g: one endpoint of two failing.
    Faults,
    /// h: guardrails.
    Guardrails,
    /// i: the audit trail.
    Audit,
    /// j and k: exact and semantic cache hits.
    Cache,
    /// l: the access log and tracing.
    Tracing,
    /// c: streaming.
    Stream,
    /// d: limits and a budget, in Redis and in memory.
    Limits,
    /// m: two workers on two cores against one on one.
    Scaling,
}

/// Variants measured at c=1 and c=32 (rows named `{prefix} {variant} c=1|32`), each after the
/// first compared with the first: its results at c=1 and c=32, and one summary part per
/// later variant (`name: c=1 p50 .. us (+.. us), c=32 .. req/s (+..%)`).
fn against_first(
    rows: &[(String, WrkResult)],
    prefix: &str,
    variants: &[&str],
) -> ((WrkResult, WrkResult), Vec<String>) {
    let find = |v: &str, c: u32| row(rows, &format!("{prefix} {v} c={c}"));
    let first = variants.first().copied().unwrap_or_default();
    let base = (find(first, 1), find(first, 32));
    let parts = variants
        .iter()
        .skip(1)
        .map(|name| {
            let (c1, c32) = (find(name, 1), find(name, 32));
            format!(
                "{name}: c=1 p50 {:.0} us ({:+.0} us), c=32 {:.0} req/s ({:+.1}%)",
                c1.p50_us,
                c1.p50_us - base.0.p50_us,
                c32.rps,
                100.0 * (c32.rps / base.1.rps.max(1.0) - 1.0)
            )
        })
        .collect();
    (base, parts)
}

fn chat_body(stream: bool, chunks: usize) -> String {
    // ~1 KB request, like a short chat turn with a system prompt.
    let filler = "The quick brown fox jumps over the lazy dog. ".repeat(18);
    json!({
        "model": "bench",
        "messages": [
            {"role": "system", "content": filler},
            {"role": "user", "content": format!("Summarise the above. mock.chunks={chunks}")}
        ],
        "stream": stream,
        "max_tokens": 64
    })
    .to_string()
}

/// Scenario c: streams of 64 chunks sent at once by the upstream, direct and through the
/// gateway, one after another; prints and returns the time to first token (p50) and the mean
/// gap between chunks of each, in microseconds.
fn streaming(
    opts: &BenchOpts,
    direct: &str,
    gateway: &str,
    auth: &str,
) -> Result<(f64, f64, f64, f64)> {
    let n = if opts.smoke { 5 } else { 200 };
    let (d_ttft, d_gap) = stream_timing(direct, None, n, 64, "bench")?;
    let (g_ttft, g_gap) = stream_timing(gateway, Some(auth), n, 64, "bench")?;
    println!(
        "c: streaming 64 chunks: TTFT p50 direct {d_ttft:.0} us, gateway {g_ttft:.0} us (+{:.0} us); time per chunk after the first direct {d_gap:.1} us, gateway {g_gap:.1} us",
        g_ttft - d_ttft
    );
    Ok((d_ttft, d_gap, g_ttft, g_gap))
}

/// Opens `n` concurrent slow streams and returns the gateway's peak RSS while they are open.
async fn concurrent_streams(url: &str, n: usize, pid: u32) -> Result<(u64, usize)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let body = json!({"model": "bench", "stream": true, "messages": [{"role": "user", "content": "mock.chunks=40 mock.interval_ms=100"}]}).to_string();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {KEY}"))
                .body(Full::new(Bytes::from(body)))
                .ok()?;
            let resp = client.request(req).await.ok()?;
            let mut b = resp.into_body();
            let mut ok = false;
            while let Some(Ok(f)) = b.frame().await {
                if f.data_ref()
                    .is_some_and(|d| d.windows(6).any(|w| w == b"[DONE]"))
                {
                    ok = true;
                }
            }
            Some(ok)
        }));
    }
    let mut peak = 0;
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut completed = 0;
    for t in tasks {
        if matches!(t.await, Ok(Some(true))) {
            completed += 1;
        }
    }
    Ok((peak, completed))
}

fn bench_config(mock: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: bench}}\nstringData: {{key: {KEY}, upstream: sk-upstream}}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: ProviderPool\nmetadata: {{name: mock}}\nspec:\n  provider: openai\n  endpoints: [{{url: \"{mock}/v1\", credentialSecretRef: {{name: bench, key: upstream}}}}]\n  models: [{{name: mock-gpt}}]\n---\napiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: bench}}\nspec: {{models: [bench], backends: [{{pool: mock, model: mock-gpt}}]}}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: VirtualKey\nmetadata: {{name: bench}}\nspec: {{secretRef: {{name: bench}}}}\n{}{}{}",
        guards::CONFIG,
        cache::CONFIG,
        semantic::CONFIG
    )
}

struct Row {
    gateway: String,
    scenario: String,
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
}

/// What a scenario module measured: rows for the table, a sentence for the report, and the
/// targets it measures (what, measured, met).
pub(super) struct Measured {
    pub(super) rows: Vec<(String, WrkResult)>,
    pub(super) summary: String,
    pub(super) targets: Vec<Target>,
}

/// The result of the row named `name` (empty when there is none).
pub(super) fn row(rows: &[(String, WrkResult)], name: &str) -> WrkResult {
    rows.iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r.clone())
        .unwrap_or_default()
}

/// A row of the targets table: what, as measured, whether met.
pub(super) type Target = (String, String, bool);

/// Runs the benchmark.
pub(crate) fn run(root: &Path, opts: &BenchOpts) -> Result<()> {
    let profile = if opts.release { "release" } else { "debug" };
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.current_dir(root).args([
        "build",
        "--quiet",
        "--bins",
        "-p",
        "switchyard-data-plane",
        "-p",
        "switchyard-control-plane",
        "-p",
        "switchyard-tests",
    ]);
    if opts.release {
        build.arg("--release");
    }
    let bin = match &opts.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            if !build.status()?.success() {
                bail!("building binaries failed");
            }
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join("target"));
            target.join(profile)
        }
    };
    let work = root.join("bench-results");
    // A config left by an older run must not leak into this one.
    let _ = std::fs::remove_dir_all(work.join("config"));
    std::fs::create_dir_all(work.join("config"))?;
    if opts.only == Some(Only::Scale) {
        config_scale(&bin, &work, opts.smoke)?;
        return Ok(());
    }
    let pinned = has_taskset()
        && std::thread::available_parallelism()
            .map(|n| n.get() >= 2)
            .unwrap_or(false);

    let mock_port = free_port();
    let mock_url = format!("http://127.0.0.1:{mock_port}");
    let _mock = spawn(
        "mock",
        Some("1"),
        &bin.join("switchyard-mock-llm"),
        &[
            "--listen".into(),
            format!("127.0.0.1:{mock_port}"),
            "--no-record".into(),
            "--workers".into(),
            "1".into(),
        ],
        &[],
        &work.join("mock.log"),
    )?;
    let nginx = nginx::start(&work)?;
    let mut config = bench_config(&mock_url);
    if let Some((_, url)) = &nginx {
        config.push_str("---\n");
        config.push_str(&nginx::config(url));
    }
    std::fs::write(work.join("config/bench.yaml"), config)?;
    let (gw_port, gw_admin) = (free_port(), free_port());
    let gw = spawn(
        "switchyard",
        Some("0"),
        &bin.join("switchyard-data-plane"),
        &[
            "--config".into(),
            work.join("config").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{gw_port}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{gw_admin}"),
        ],
        &[
            ("TOKIO_WORKER_THREADS", if pinned { "1" } else { "2" }),
            ("RUST_LOG", "warn"),
        ],
        &work.join("gateway.log"),
    )?;
    wait_http(&format!("{mock_url}/healthz"), Duration::from_secs(10))?;
    wait_http(
        &format!("http://127.0.0.1:{gw_admin}/readyz"),
        Duration::from_secs(10),
    )?;
    let idle_rss = rss_kib(gw.pid()).unwrap_or(0);

    let body = chat_body(false, 16);
    let direct = format!("{mock_url}/v1/chat/completions");
    let gateway = format!("http://127.0.0.1:{gw_port}/v1/chat/completions");
    let auth = format!("Bearer {KEY}");
    let d = opts.duration;
    let mut rows = Vec::new();
    let mut targets: Vec<(String, String, bool)> = Vec::new();
    let mut record = |gateway: &str, scenario: &str, r: &WrkResult| {
        println!(
            "{gateway:>12} {scenario:<28} {:>9.0} req/s  p50 {:>8.0} us  p99 {:>8.0} us  p99.9 {:>8.0} us  requests {} errors {}",
            r.rps, r.p50_us, r.p99_us, r.p999_us, r.requests, r.errors
        );
        rows.push(Row {
            gateway: gateway.into(),
            scenario: scenario.into(),
            rps: r.rps,
            p50: r.p50_us,
            p99: r.p99_us,
            p999: r.p999_us,
            errors: r.errors,
        });
    };

    // a. concurrency 1: added latency.
    let wrk_dir = work.clone();
    let direct_c1 = wrk(&direct, 1, d, &[], &body, &wrk_dir)?;
    record("direct", "a: chat c=1", &direct_c1);
    let gw_c1 = wrk(&gateway, 1, d, &[("Authorization", &auth)], &body, &wrk_dir)?;
    record("switchyard", "a: chat c=1", &gw_c1);
    let added_p50 = gw_c1.p50_us - direct_c1.p50_us;
    let added_p99 = gw_c1.p99_us - direct_c1.p99_us;
    targets.push((
        "added latency p50 <= 50 us".into(),
        format!("{added_p50:.0} us"),
        added_p50 <= 50.0,
    ));
    targets.push((
        "added latency p99 <= 250 us".into(),
        format!("{added_p99:.0} us"),
        added_p99 <= 250.0,
    ));

    // b. concurrency 32 and 128 (auth always on; limits arrive with issue 5).
    let mut ratio32 = 0.0;
    let mut direct_c32 = 0.0;
    for c in [32u32, 128] {
        let dr = wrk(&direct, c, d, &[], &body, &wrk_dir)?;
        record("direct", &format!("b: chat c={c}"), &dr);
        let gr = wrk(&gateway, c, d, &[("Authorization", &auth)], &body, &wrk_dir)?;
        record("switchyard", &format!("b: chat c={c}"), &gr);
        if c == 32 {
            direct_c32 = dr.rps;
            ratio32 = if dr.rps > 0.0 { gr.rps / dr.rps } else { 0.0 };
        }
    }
    targets.push((
        "throughput c=32 >= 50% of direct (auth on)".into(),
        format!("{:.0}%", ratio32 * 100.0),
        ratio32 >= 0.5,
    ));
    // a and b again against nginx (one worker, canned completion): the faster upstream.
    // Only the runs whose scenarios compare with it (d and m use nginx as their upstream).
    let mut vs_nginx = None;
    let mut nginx_direct = None;
    if let Some((_, nginx_url)) = nginx
        .as_ref()
        .filter(|_| matches!(opts.only, None | Some(Only::Limits) | Some(Only::Scaling)))
    {
        let direct = format!("{nginx_url}/v1/chat/completions");
        let body = body.replace("\"model\":\"bench\"", "\"model\":\"bench-nginx\"");
        let hdr = [("Authorization", auth.as_str())];
        let dc1 = wrk(&direct, 1, d, &[], &body, &wrk_dir)?;
        record("nginx direct", "a: chat c=1", &dc1);
        let gc1 = wrk(&gateway, 1, d, &hdr, &body, &wrk_dir)?;
        record("via nginx", "a: chat c=1", &gc1);
        let dc32 = wrk(&direct, 32, d, &[], &body, &wrk_dir)?;
        record("nginx direct", "b: chat c=32", &dc32);
        let gc32 = wrk(&gateway, 32, d, &hdr, &body, &wrk_dir)?;
        record("via nginx", "b: chat c=32", &gc32);
        let added = gc1.p50_us - dc1.p50_us;
        let ratio = if dc32.rps > 0.0 {
            gc32.rps / dc32.rps
        } else {
            0.0
        };
        targets.push((
            "vs nginx: added latency p50 <= 50 us at c=1".into(),
            format!("{added:.0} us"),
            added <= 50.0,
        ));
        targets.push((
            "vs nginx: throughput c=32 >= 50% of direct".into(),
            format!("{:.0}%", ratio * 100.0),
            ratio >= 0.5,
        ));
        vs_nginx = Some((added, gc1.p50_us / dc1.p50_us.max(1.0), ratio));
        nginx_direct = Some((nginx_url.clone(), body, (dc1.p50_us, dc32.rps)));
    }

    let scaling_body = nginx_direct
        .as_ref()
        .map_or(body.as_str(), |(_, b, _)| b.as_str());
    if opts.only == Some(Only::Scaling) {
        let m = scaling::run(&bin, &work, d, &auth, scaling_body)?;
        for (scenario, r) in &m.rows {
            record("switchyard", scenario, r);
        }
        println!("m: {}", m.summary);
        return Ok(());
    }
    if opts.only == Some(Only::Guardrails) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let m = guards::run(&rt, &gateway, &auth, d, &body, &wrk_dir)?;
        for (scenario, r) in &m.rows {
            record("switchyard", scenario, r);
        }
        println!("h: {}", m.summary);
        return Ok(());
    }
    if opts.only == Some(Only::Audit) {
        let m = audit::run(&bin, &work, d, &auth, &body)?;
        for (scenario, r) in &m.rows {
            record("switchyard", scenario, r);
        }
        println!("i: {}", m.summary);
        return Ok(());
    }
    if opts.only == Some(Only::Tracing) {
        match tracing::run(root, &bin, &work, d, &auth, &body)? {
            Some(m) => {
                for (scenario, r) in &m.rows {
                    record("switchyard", scenario, r);
                }
                println!("l: {}", m.summary);
            }
            None => println!("l: skipped (no collector)"),
        }
        return Ok(());
    }
    if opts.only == Some(Only::Stream) {
        streaming(opts, &direct, &gateway, &auth)?;
        return Ok(());
    }
    // d. the same requests with limits and a budget, on gateways of their own (their config
    // loads a BPE table; a-c and e keep measuring the plain path).
    let scenario_d = if matches!(opts.only, None | Some(Only::Limits)) {
        let limited_body = body.replace("\"model\":\"bench\"", "\"model\":\"bench-limited\"");
        let upstream = match &nginx_direct {
            Some((url, _, direct)) => limits::Upstream {
                url,
                name: "nginx",
                direct: *direct,
            },
            None => limits::Upstream {
                url: &mock_url,
                name: "mock",
                direct: (direct_c1.p50_us, direct_c32),
            },
        };
        match limits::run(&bin, &work, &upstream, d, &limited_body)? {
            Some(m) => {
                for (scenario, r) in &m.rows {
                    record("switchyard", scenario, r);
                }
                targets.extend(m.targets);
                m.summary
            }
            None => "skipped: redis-server is not installed".to_owned(),
        }
    } else {
        String::new()
    };
    if opts.only == Some(Only::Limits) {
        println!("d: {scenario_d}");
        return Ok(());
    }
    if opts.only == Some(Only::Faults) {
        let m = faults::run(&bin, &work, d, &body)?;
        for (scenario, r) in &m.rows {
            record("switchyard", scenario, r);
        }
        println!("g: {}", m.summary);
        return Ok(());
    }
    // j. exact cache hits; k. semantic hits (all that --cache-only runs).
    let (scenario_j, scenario_k) = {
        let j = cache::run(
            &gateway,
            &auth,
            d,
            &body,
            &wrk_dir,
            (direct_c1.p50_us, direct_c32),
        )?;
        let exact_hit = j.rows.first().map_or(0.0, |(_, r)| r.p50_us);
        let n = if opts.smoke { 2 } else { 30 };
        let k = semantic::run(root, &bin, &work, &auth, n, exact_hit)?;
        for (scenario, r) in j.rows.iter().chain(&k.rows) {
            record("switchyard", scenario, r);
        }
        targets.extend(k.targets);
        (j.summary, k.summary)
    };
    println!("j: {scenario_j}");
    println!("k: {scenario_k}");
    if opts.only == Some(Only::Cache) {
        return Ok(());
    }
    println!("d: {scenario_d}");

    // g. one of two endpoints failing 30% of its requests.
    let scenario_g = {
        let m = faults::run(&bin, &work, d, &body)?;
        for (scenario, r) in &m.rows {
            record("switchyard", scenario, r);
        }
        m.summary
    };
    println!("g: {scenario_g}");

    // i. the audit trail: off, to files, to files and Redis.
    let scenario_i = {
        let m = audit::run(&bin, &work, d, &auth, &body)?;
        for (scenario, r) in &m.rows {
            record("switchyard", scenario, r);
        }
        m.summary
    };
    println!("i: {scenario_i}");

    // l. the access log, and tracing every request to a real collector.
    let scenario_l = match tracing::run(root, &bin, &work, d, &auth, &body)? {
        Some(m) => {
            for (scenario, r) in &m.rows {
                record("switchyard", scenario, r);
            }
            targets.extend(m.targets);
            m.summary
        }
        None => "skipped (the collector could not be built)".to_owned(),
    };
    println!("l: {scenario_l}");

    // m. two workers on two cores against one on one, on the faster upstream.
    let scenario_m = {
        let m = scaling::run(&bin, &work, d, &auth, scaling_body)?;
        for (scenario, r) in &m.rows {
            record("switchyard", scenario, r);
        }
        targets.extend(m.targets);
        m.summary
    };
    println!("m: {scenario_m}");

    // Instructions per plain request with the access log on (the default), counted under
    // callgrind on this run's binaries: release builds only, valgrind installed.
    if opts.release
        && !opts.smoke
        && let Some(n) = logged_instructions(root, &bin)
    {
        targets.push((
            "instructions per plain request, access log on <= 60k".into(),
            format!("{:.1}k", n as f64 / 1000.0),
            n <= 60_000,
        ));
    }

    // c. streaming, 64 chunks.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (d_ttft, d_gap, g_ttft, g_gap) = streaming(opts, &direct, &gateway, &auth)?;
    let added_ttft = g_ttft - d_ttft;
    targets.push((
        "streaming: <= 100 us added to TTFT".into(),
        format!("{added_ttft:.0} us"),
        added_ttft <= 100.0,
    ));

    // e. memory idle and with 1,000 open streams.
    let streams = if opts.smoke { 20 } else { 1000 };
    let (peak, completed) = rt.block_on(concurrent_streams(&gateway, streams, gw.pid()))?;
    println!(
        "e: RSS idle {} KiB; peak with {streams} open streams {peak} KiB ({completed} completed)",
        idle_rss
    );
    targets.push((
        format!("RSS <= 64 MB at {streams} streams"),
        format!("{:.1} MB", peak as f64 / 1024.0),
        peak <= 64 * 1024,
    ));
    drop(gw);

    // f. config scale: 1k routes + 100k keys, standalone compile+apply and fleet push.
    let Scale {
        routes,
        keys,
        standalone_s,
        scale_rss,
        fleet_ready_s,
        change_ms,
        fleet_rss,
    } = config_scale(&bin, &work, opts.smoke)?;
    targets.push((
        format!("{keys} keys: cold start to ready <= 1.5 s (standalone)"),
        format!("{standalone_s:.2} s"),
        standalone_s <= 1.5,
    ));
    targets.push((
        format!("{keys} keys: cold start to ready <= 1.5 s (fleet)"),
        format!("{fleet_ready_s:.2} s"),
        fleet_ready_s <= 1.5,
    ));
    targets.push((
        "one changed key reaches every data plane <= 100 ms".into(),
        format!("{change_ms:.0} ms"),
        change_ms <= 100.0,
    ));
    targets.push((
        format!("data-plane RSS with {keys} keys <= 100 MB (fleet)"),
        format!("{:.1} MB", fleet_rss as f64 / 1024.0),
        fleet_rss <= 100 * 1024,
    ));

    // Peers, same mock, same placement, scenarios a and b.
    let mut peer_notes = Vec::new();
    if opts.peers {
        for peer in [Peer::LiteLlm, Peer::Portkey] {
            match start_peer(peer, root, &work, &mock_url) {
                Ok((proc_, url, headers)) => {
                    let hdrs: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    for c in [1u32, 32, 128] {
                        match wrk(&url, c, d, &hdrs, &body, &wrk_dir) {
                            Ok(r) => record(
                                peer.name(),
                                &format!("{}: chat c={c}", if c == 1 { "a" } else { "b" }),
                                &r,
                            ),
                            Err(e) => peer_notes.push(format!("{} c={c}: {e}", peer.name())),
                        }
                    }
                    peer_notes.push(format!("{}: {}", peer.name(), peer.version(root, &work)));
                    drop(proc_);
                }
                Err(e) => {
                    println!("peer {} unavailable: {e:#}", peer.name());
                    peer_notes.push(format!("{} not run: {e:#}", peer.name()));
                }
            }
        }
    }

    // Report.
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let wrk_version = Command::new("wrk")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\nGenerated by `cargo xtask bench{}` on {date}.\n",
        if opts.smoke { " --smoke" } else { "" }
    );
    let _ = writeln!(
        md,
        "- Machine: {cpu}, {cores} cores; build profile `{profile}`; load generator {wrk_version}, 1 thread."
    );
    let _ = writeln!(
        md,
        "- Placement: {}.",
        if pinned {
            "gateway pinned to CPU 0 (1 Tokio worker); mock upstream (1 worker) and wrk share CPU 1"
        } else {
            "no pinning (taskset unavailable or 1 core)"
        }
    );
    let _ = writeln!(
        md,
        "- Upstreams: `switchyard-mock-llm` (hyper, 0 ms, 1 worker) and nginx (1 worker, canned completion), OpenAI wire format; ~1 KB chat request, 16-token answer; the gateway authenticates a virtual key on every request."
    );
    if !peer_notes.is_empty() {
        let _ = writeln!(
            md,
            "- Peers (same mock, same placement): {}.",
            peer_notes.join("; ")
        );
    }
    let _ = writeln!(md, "- Duration per point: {} s.\n", d.as_secs());
    let _ = writeln!(
        md,
        "| gateway | scenario | req/s | p50 (us) | p99 (us) | p99.9 (us) | errors |\n|---|---|---:|---:|---:|---:|---:|"
    );
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            r.gateway, r.scenario, r.rps, r.p50, r.p99, r.p999, r.errors
        );
    }
    let _ = writeln!(
        md,
        "\nRatios (switchyard / direct): c=1 p50 {:.2}x; c=32 throughput {:.0}%.\n",
        gw_c1.p50_us / direct_c1.p50_us.max(1.0),
        ratio32 * 100.0
    );
    match vs_nginx {
        Some((added, p50_ratio, ratio)) => {
            let _ = writeln!(
                md,
                "Ratios (switchyard via nginx / nginx direct, one nginx worker, canned completion): c=1 p50 {p50_ratio:.2}x (added {added:.0} us); c=32 throughput {:.0}%.\n",
                ratio * 100.0
            );
        }
        None => {
            let _ = writeln!(md, "nginx is not installed: no nginx direct path.\n");
        }
    }
    let _ = writeln!(
        md,
        "- c. streaming, 64 chunks: TTFT p50 direct {d_ttft:.0} us, switchyard {g_ttft:.0} us (added {added_ttft:.0} us); time per chunk after the first direct {d_gap:.1} us, switchyard {g_gap:.1} us (a socket client, one keep-alive connection)."
    );
    let _ = writeln!(md, "- d. {scenario_d}.");
    let _ = writeln!(md, "- g. {scenario_g}.");
    let _ = writeln!(md, "- i. {scenario_i}.");
    let _ = writeln!(md, "- j. {scenario_j}.");
    let _ = writeln!(md, "- k. {scenario_k}.");
    let _ = writeln!(md, "- l. {scenario_l}.");
    let _ = writeln!(md, "- m. {scenario_m}.");
    let _ = writeln!(
        md,
        "- e. resident memory: idle {:.1} MB; peak {:.1} MB with {streams} concurrent open streams ({completed} completed).",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "- f. {routes} routes + {keys} virtual keys, standalone (YAML parse + compile + apply, to ready): {standalone_s:.2} s; data-plane RSS {:.1} MB. Fleet (control plane with a `dir:` source + 2 data planes, plaintext gRPC on loopback): both ready {fleet_ready_s:.2} s after start; one changed key (disabled) rejected by both data planes {change_ms:.0} ms after its file was written; a fleet data plane's RSS then {:.1} MB.\n",
        scale_rss as f64 / 1024.0,
        fleet_rss as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "## Targets\n\n| target | measured | met |\n|---|---|---|"
    );
    for (t, m, ok) in &targets {
        let _ = writeln!(md, "| {t} | {m} | {} |", if *ok { "yes" } else { "**no**" });
    }
    let _ = writeln!(md, "\n![throughput and p99](benchmarks.svg)");
    let json = json!({
        "date": date, "cpu": cpu, "cores": cores, "profile": profile, "pinned": pinned,
        "rows": rows.iter().map(|r| json!({"gateway": r.gateway, "scenario": r.scenario, "rps": r.rps, "p50_us": r.p50, "p99_us": r.p99, "p999_us": r.p999, "errors": r.errors})).collect::<Vec<_>>(),
        "streaming": {"direct_ttft_p50_us": d_ttft, "gateway_ttft_p50_us": g_ttft, "direct_gap_us": d_gap, "gateway_gap_us": g_gap},
        "memory": {"idle_kib": idle_rss, "peak_kib": peak, "streams": streams, "completed": completed},
        "scale": {"routes": routes, "keys": keys, "standalone_seconds": standalone_s, "rss_kib": scale_rss, "fleet_ready_seconds": fleet_ready_s, "one_key_change_ms": change_ms, "fleet_rss_kib": fleet_rss},
        "targets": targets.iter().map(|(t, m, ok)| json!({"target": t, "measured": m, "met": ok})).collect::<Vec<_>>(),
    });
    let raw = serde_json::to_string_pretty(&json)?;
    std::fs::write(work.join("results.json"), &raw)?;
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs)?;
    if !opts.smoke {
        std::fs::write(docs.join("benchmarks.json"), &raw)?;
    }
    let (md_path, svg_path) = if opts.smoke {
        (work.join("benchmarks.md"), work.join("benchmarks.svg"))
    } else {
        (docs.join("benchmarks.md"), docs.join("benchmarks.svg"))
    };
    std::fs::write(&md_path, md)?;
    std::fs::write(&svg_path, svg(&rows))?;
    println!(
        "wrote {}, {} and {}",
        md_path.display(),
        svg_path.display(),
        work.join("results.json").display()
    );
    Ok(())
}

/// Instructions per plain request with the access log on: `tools/instructions.sh`'s `logged`
/// case on `bin`'s data plane and mock. `None` (and a line saying why) when it cannot run.
fn logged_instructions(root: &Path, bin: &Path) -> Option<u64> {
    let out = Command::new("bash")
        .arg(root.join("tools/instructions.sh"))
        .arg(bin.join("switchyard-data-plane"))
        .arg(bin.join("switchyard-mock-llm"))
        .env("INSTRUCTIONS_CASES", "logged")
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            println!(
                "instructions: not counted: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            println!("instructions: not counted: {e}");
            return None;
        }
    };
    let n = text
        .lines()
        .find_map(|l| l.strip_prefix("logged ")?.trim().parse().ok());
    if let Some(n) = n {
        println!("instructions per plain request, access log on: {n}");
    }
    n
}

/// A bar chart of throughput and p99 per gateway and scenario.
fn svg(rows: &[Row]) -> String {
    let max_rps = rows.iter().map(|r| r.rps).fold(1.0, f64::max);
    let max_p99 = rows.iter().map(|r| r.p99).fold(1.0, f64::max);
    let (w, bar_h, gap) = (900.0, 16.0, 10.0);
    let h = 60.0 + rows.len() as f64 * (2.0 * bar_h + gap);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">Throughput (blue, req/s) and p99 latency (orange, us) per gateway and scenario</text>\n"
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * (2.0 * bar_h + gap);
        let rw = (r.rps / max_rps) * 500.0;
        let pw = (r.p99 / max_p99) * 500.0;
        let _ = write!(
            s,
            "<text x=\"10\" y=\"{:.0}\">{} — {}</text>\n<rect x=\"260\" y=\"{y:.0}\" width=\"{rw:.1}\" height=\"{bar_h}\" fill=\"#3b82f6\"/><text x=\"{:.0}\" y=\"{:.0}\">{:.0}</text>\n<rect x=\"260\" y=\"{:.0}\" width=\"{pw:.1}\" height=\"{bar_h}\" fill=\"#f97316\"/><text x=\"{:.0}\" y=\"{:.0}\">{:.0}</text>\n",
            y + bar_h + 4.0,
            r.gateway,
            r.scenario,
            265.0 + rw,
            y + 12.0,
            r.rps,
            y + bar_h,
            265.0 + pw,
            y + bar_h + 12.0,
            r.p99
        );
    }
    s.push_str("</svg>\n");
    s
}
