//! End-to-end, fleet mode: the control plane (directory source) and two data planes as real
//! processes, with the mock upstream. Proves the config stream: mutual TLS (only data planes
//! with a certificate from the client CA, naming their own node, get a config), propagation,
//! resilience when the control plane goes away, and per-resource rejection.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use switchyard_tests::procs::{Proc, eventually, free_addr, reqwest_lite};

struct Fleet {
    dir: PathBuf,
    tls: Tls,
    cfg: PathBuf,
    _mock: Proc,
    cp: Proc,
    cp_grpc: SocketAddr,
    cp_admin: SocketAddr,
    dps: Vec<(Proc, String, String)>,
}

fn start_cp(cfg: &Path, grpc: SocketAddr, admin: SocketAddr, tls: &Tls, log_dir: &Path) -> Proc {
    let mut args = tls.server_args();
    args.extend([
        "--source".into(),
        format!("dir:{}", cfg.display()),
        "--grpc-listen".into(),
        grpc.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
        "--poll-interval".into(),
        "100ms".into(),
    ]);
    Proc::start("switchyard-control-plane", &args, &[], log_dir)
}

fn start_dp(grpc: SocketAddr, node: &str, tls: &Tls, log_dir: &Path) -> (Proc, String, String) {
    let cert = tls.client_cert(log_dir, node);
    start_fleet_dp(grpc, node, &tls.ca, Credential::Cert(&cert), &[], log_dir)
}

async fn fleet() -> Fleet {
    let dir = temp_dir("fleet");
    let (mock, mock_url) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock_url)).expect("write");
    let (cp_grpc, cp_admin) = (free_addr(), free_addr());
    let tls = tls(&dir);
    let cp = start_cp(&cfg, cp_grpc, cp_admin, &tls, &dir);
    let dps = vec![
        start_dp(cp_grpc, "dp-a", &tls, &dir),
        start_dp(cp_grpc, "dp-b", &tls, &dir),
    ];
    for (_, _, admin) in &dps {
        wait_ready(admin).await;
    }
    wait_up(&format!("{mock_url}/healthz")).await;
    Fleet {
        dir,
        tls,
        cfg,
        _mock: mock,
        cp,
        cp_grpc,
        cp_admin,
        dps,
    }
}

async fn cp_metrics(f: &Fleet) -> String {
    reqwest_lite::Client::default()
        .get_text(&format!("http://{}/metrics", f.cp_admin))
        .await
        .map(|(_, b)| b)
        .unwrap_or_default()
}

const LATE_ROUTE: &str = "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: late}\nspec: {models: [late], backends: [{pool: builtin}]}\n";

#[tokio::test]
async fn requests_flow_and_changes_reach_every_data_plane() {
    let f = fleet().await;
    for (_, api, _) in &f.dps {
        assert_eq!(status_of(api, "chat").await, 200);
        assert_eq!(status_of(api, "late").await, 404);
    }
    eventually(DEADLINE, "both data planes to ACK", || async {
        cp_metrics(&f)
            .await
            .contains("switchyard_control_plane_data_plane_responses_total{result=\"ack\"} 2")
            .then_some(())
    })
    .await;
    assert!(
        cp_metrics(&f)
            .await
            .contains("switchyard_control_plane_connected_data_planes 2")
    );

    std::fs::write(f.cfg.join("late.yaml"), LATE_ROUTE).expect("write");
    for (_, api, _) in &f.dps {
        until_status(api, "late", 200, "the new route on every data plane").await;
    }
    // Removing a key reaches every data plane too.
    let base = std::fs::read_to_string(f.cfg.join("base.yaml")).expect("read");
    let without_main = base.replace(
        "metadata: {name: main}\nspec: {secretRef: {name: client-keys, key: main}}",
        "metadata: {name: main}\nspec: {secretRef: {name: client-keys, key: main}, disabled: true}",
    );
    assert_ne!(base, without_main);
    std::fs::write(f.cfg.join("base.yaml"), without_main).expect("write");
    for (_, api, _) in &f.dps {
        until_status(
            api,
            "chat",
            401,
            "the disabled key to be rejected everywhere",
        )
        .await;
    }
    // After the first full snapshot, every change travelled as a delta.
    let metrics = cp_metrics(&f).await;
    assert!(
        metrics.contains("switchyard_control_plane_snapshots_sent_total 2")
            && metrics.contains("switchyard_control_plane_deltas_sent_total 4"),
        "{metrics}"
    );
    for (dp, _, _) in &f.dps {
        let deltas = dp
            .logs()
            .lines()
            .filter(|l| l.contains("config applied") && l.contains("delta"))
            .count();
        assert_eq!(deltas, 2, "{}", dp.logs());
    }
}

#[tokio::test]
async fn data_planes_survive_the_control_plane_and_catch_up() {
    let mut f = fleet().await;
    f.cp.kill();
    // Still serving the last good config, and still ready.
    for (_, api, admin) in &f.dps {
        assert_eq!(status_of(api, "chat").await, 200);
        let c = reqwest_lite::Client::default();
        assert_eq!(c.get_status(&format!("{admin}/readyz")).await, Some(200));
    }
    // A change made while the control plane is down arrives when it returns.
    std::fs::write(f.cfg.join("late.yaml"), LATE_ROUTE).expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing may pick it up: no control plane
    for (_, api, _) in &f.dps {
        assert_eq!(status_of(api, "late").await, 404);
    }
    f.cp = start_cp(&f.cfg, f.cp_grpc, f.cp_admin, &f.tls, &f.dir);
    for (_, api, _) in &f.dps {
        until_status(
            api,
            "late",
            200,
            "the data plane to catch up after the control plane returned",
        )
        .await;
    }
    for (dp, _, _) in &f.dps {
        assert!(
            dp.logs().contains("config stream down"),
            "the outage is logged"
        );
    }
}

#[tokio::test]
async fn an_invalid_resource_is_reported_and_the_rest_keeps_working() {
    let f = fleet().await;
    std::fs::write(
        f.cfg.join("broken.yaml"),
        "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: broken}\nspec: {models: [broken], backends: [{pool: no-such-pool}]}\n---\n".to_owned() + LATE_ROUTE,
    )
    .expect("write");
    for (_, api, _) in &f.dps {
        until_status(api, "late", 200, "the valid route next to the broken one").await;
        assert_eq!(status_of(api, "broken").await, 404);
        assert_eq!(status_of(api, "chat").await, 200);
    }
    eventually(DEADLINE, "the rejection to be logged", || async {
        let logs = f.cp.logs();
        (logs.contains("LLMRoute default/broken") && logs.contains("PoolNotFound")).then_some(())
    })
    .await;
    assert!(
        cp_metrics(&f)
            .await
            .contains("switchyard_control_plane_rejected_resources 1")
    );
    // A new data plane joining now gets the same (partial) config and becomes ready.
    let late = start_dp(f.cp_grpc, "dp-c", &f.tls, &f.dir);
    wait_ready(&late.2).await;
    assert_eq!(status_of(&late.1, "late").await, 200);
}

#[tokio::test]
async fn a_resource_a_data_plane_cannot_run_is_nacked_alone_and_the_rest_runs() {
    let f = fleet().await;
    // The control plane accepts a Bedrock pool without credentials (the data planes' own AWS
    // environment is the fallback); these data planes have none.
    std::fs::write(
        f.cfg.join("bedrock.yaml"),
        "apiVersion: switchyard.dev/v1alpha1\nkind: ProviderPool\nmetadata: {name: bedrock-nocreds}\nspec: {provider: bedrock, bedrock: {region: us-east-1}, endpoints: [{url: \"https://bedrock-runtime.us-east-1.amazonaws.com\"}]}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: on-bedrock}\nspec: {models: [on-bedrock], backends: [{pool: bedrock-nocreds}]}\n---\n".to_owned() + LATE_ROUTE,
    )
    .expect("write");
    for (_, api, admin) in &f.dps {
        until_status(api, "late", 200, "the rest of the snapshot").await;
        assert_eq!(status_of(api, "chat").await, 200);
        let (_, metrics) = reqwest_lite::Client::default()
            .get_text(&format!("{admin}/metrics"))
            .await
            .expect("metrics");
        assert!(
            metrics.contains("switchyard_config_rejected_resources 2"),
            "the pool and the route that only it served: {metrics}"
        );
        assert!(
            metrics.contains(r#"switchyard_config_updates_total{result="partial"} 1"#),
            "{metrics}"
        );
    }
    eventually(DEADLINE, "both NACKs, per resource", || async {
        let logs = f.cp.logs();
        let nacks = logs
            .lines()
            .filter(|l| {
                l.contains("data plane rejected resource")
                    && l.contains("bedrock-nocreds")
                    && l.contains("no AWS credentials")
            })
            .count();
        (nacks >= 2).then_some(())
    })
    .await;
    let metrics = cp_metrics(&f).await;
    assert!(
        metrics.contains(r#"switchyard_control_plane_data_plane_responses_total{result="nack"} 2"#),
        "{metrics}"
    );
    // Nothing was rejected by the control plane itself.
    assert!(
        metrics.contains("switchyard_control_plane_rejected_resources 0"),
        "{metrics}"
    );
}

/// HA: a data plane given two replicas keeps serving while the one it streams from dies,
/// moves to the other and gets the next change from it; a data plane restarted in the middle
/// of a stream of changes converges to the last one.
#[tokio::test]
async fn a_data_plane_fails_over_between_replicas_and_converges_after_a_restart() {
    let mut f = fleet().await;
    let (grpc2, admin2) = (free_addr(), free_addr());
    let _cp2 = start_cp(&f.cfg, grpc2, admin2, &f.tls, &f.dir);
    let cert = f.tls.client_cert(&f.dir, "dp-c");
    let (dp_c, api, admin) = start_fleet_dp_on(
        &[f.cp_grpc, grpc2],
        "dp-c",
        &f.tls.ca,
        Credential::Cert(&cert),
        &[],
        &f.dir,
    );
    wait_ready(&admin).await;
    // Requests flow the whole time the first replica goes away.
    let flowing = {
        let api = api.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            let until = tokio::time::Instant::now() + Duration::from_secs(4);
            while tokio::time::Instant::now() < until {
                if status_of(&api, "chat").await == 200 {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.cp.kill();
    std::fs::write(f.cfg.join("late.yaml"), LATE_ROUTE).expect("write");
    until_status(&api, "late", 200, "the change, from the other replica").await;
    let (ok, failed) = flowing.await.expect("request loop");
    assert_eq!(failed, 0, "{ok} requests succeeded");
    assert!(ok > 10, "{ok}");
    assert!(
        dp_c.logs().contains(&format!("localhost:{}", grpc2.port())),
        "{}",
        dp_c.logs()
    );

    // Churn: ten versions of one route, a data plane killed and started again in between.
    let version = |i: u32| {
        format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: churn}}\nspec: {{models: [churn-{i}], backends: [{{pool: builtin}}]}}\n"
        )
    };
    let mut dp = Some(dp_c);
    let mut api = api;
    for i in 0..10 {
        std::fs::write(f.cfg.join("churn.yaml"), version(i)).expect("write");
        tokio::time::sleep(Duration::from_millis(150)).await;
        if i == 4 {
            drop(dp.take());
            let (p, a, adm) = start_fleet_dp_on(
                &[grpc2],
                "dp-c",
                &f.tls.ca,
                Credential::Cert(&cert),
                &[],
                &f.dir,
            );
            wait_ready(&adm).await;
            dp = Some(p);
            api = a;
        }
    }
    until_status(&api, "churn-9", 200, "the last version after the restart").await;
    assert_eq!(
        status_of(&api, "churn-8").await,
        404,
        "no older version lingers"
    );
}

#[tokio::test]
async fn a_data_plane_without_a_control_plane_is_not_ready() {
    let dir = temp_dir("orphan");
    let (_dp, api, admin) = start_dp(free_addr(), "orphan", &tls(&dir), &dir);
    let c = reqwest_lite::Client::default();
    eventually(DEADLINE, "admin up", || async {
        c.get_status(&format!("{admin}/healthz"))
            .await
            .filter(|s| *s == 200)
    })
    .await;
    assert_eq!(c.get_status(&format!("{admin}/readyz")).await, Some(503));
    let (status, _, body) = post(
        &format!("{api}/v1/chat/completions"),
        Some(CLIENT_KEY),
        &chat_body("chat", "hi"),
    )
    .await;
    assert_openai_error(status, &body, 503);
}

#[tokio::test]
async fn the_config_stream_is_tls_and_the_data_plane_verifies_the_server() {
    let f = fleet().await;
    // A data plane trusting another CA never gets a config.
    let other = tls(&temp_dir("other-ca"));
    let (mut wrong, _, admin) = start_dp(f.cp_grpc, "dp-wrong-ca", &other, &f.dir);
    let c = reqwest_lite::Client::default();
    eventually(DEADLINE, "admin up", || async {
        c.get_status(&format!("{admin}/healthz"))
            .await
            .filter(|s| *s == 200)
    })
    .await;
    eventually(
        DEADLINE,
        "a TLS verification failure in the log",
        || async {
            let logs = wrong.logs();
            logs.contains("config stream down").then_some(())
        },
    )
    .await;
    assert_eq!(c.get_status(&format!("{admin}/readyz")).await, Some(503));
    wrong.kill();

    // Plaintext is refused unless explicitly allowed, on both sides.
    let out = std::process::Command::new(
        switchyard_tests::procs::bin_dir().join("switchyard-data-plane"),
    )
    .args(["--control-plane", &format!("http://{}", f.cp_grpc)])
    .output()
    .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing plaintext"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(
        switchyard_tests::procs::bin_dir().join("switchyard-control-plane"),
    )
    .args([
        "--source",
        &format!("dir:{}", f.cfg.display()),
        "--grpc-listen",
        &free_addr().to_string(),
    ])
    .output()
    .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gRPC needs TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // TLS without any way to authenticate clients is refused too.
    let out = std::process::Command::new(
        switchyard_tests::procs::bin_dir().join("switchyard-control-plane"),
    )
    .args([
        "--source",
        &format!("dir:{}", f.cfg.display()),
        "--grpc-listen",
        &free_addr().to_string(),
        "--admin-listen",
        &free_addr().to_string(),
        "--tls-cert",
        &f.tls.server.cert.display().to_string(),
        "--tls-key",
        &f.tls.server.key.display().to_string(),
    ])
    .output()
    .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("data planes must authenticate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn only_authenticated_data_planes_receive_the_config() {
    let f = fleet().await;
    let dir = temp_dir("intruder");
    let grpc = f.cp_grpc;
    // No credential at all: Unauthenticated before any snapshot.
    let none = open_config_stream(grpc, &f.tls.ca, "intruder", None, None).await;
    assert_refused(&none, tonic::Code::Unauthenticated, "no credential");
    // A bearer token is no credential for a control plane that takes certificates only.
    let token = open_config_stream(grpc, &f.tls.ca, "intruder", Some("ey.fake.jwt"), None).await;
    assert_refused(&token, tonic::Code::Unauthenticated, "a token");
    // A certificate from another CA fails the handshake.
    let other = tls(&dir);
    let foreign = other.client_cert(&dir, "dp-a");
    let out = open_config_stream(grpc, &f.tls.ca, "dp-a", None, Some(&foreign)).await;
    assert!(
        !matches!(out, StreamOutcome::Snapshot(_)),
        "a certificate from another CA got a snapshot: {out:?}"
    );
    // A valid certificate claiming another node's id.
    let mine = f.tls.client_cert(&dir, "dp-z");
    let out = open_config_stream(grpc, &f.tls.ca, "dp-a", None, Some(&mine)).await;
    assert_refused(
        &out,
        tonic::Code::PermissionDenied,
        "someone else's node id",
    );
    // The same certificate under its own name is served (so the refusals above are the
    // credentials' doing, not the client's).
    let out = open_config_stream(grpc, &f.tls.ca, "dp-z", None, Some(&mine)).await;
    assert!(matches!(out, StreamOutcome::Snapshot(_)), "{out:?}");
    let m = cp_metrics(&f).await;
    for line in [
        "switchyard_control_plane_config_stream_auth_total{result=\"missing\"} 1",
        "switchyard_control_plane_config_stream_auth_total{result=\"bad_token\"} 1",
        "switchyard_control_plane_config_stream_auth_total{result=\"node_mismatch\"} 1",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    // The legitimate data planes were never disturbed.
    for (_, api, _) in &f.dps {
        assert_eq!(status_of(api, "chat").await, 200);
    }
}
