//! End-to-end on a real etcd (the one `tests/kube-env/build.sh` builds): a fleet without
//! Kubernetes. Resources are loaded from a directory with the control plane's `load`
//! command, served to a data plane, changed and deleted key by key; the watch survives a
//! partition from etcd past a compaction; the leader writes status and gives its lease up on
//! SIGTERM.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use etcd_client::{Client, CompactionOptions, GetOptions};
use switchyard_tests::etcd::EtcdServer;
use switchyard_tests::procs::{Proc, TcpGate, eventually, free_addr};

const PREFIX: &str = "/sy-e2e/";

fn start_cp(etcd: &str, identity: &str, tls: &Tls, dir: &Path) -> (Proc, SocketAddr) {
    let grpc = free_addr();
    let mut args = tls.server_args();
    args.extend([
        "--source".into(),
        format!("etcd:{etcd}"),
        "--etcd-prefix".into(),
        PREFIX.into(),
        "--grpc-listen".into(),
        grpc.to_string(),
        "--admin-listen".into(),
        free_addr().to_string(),
        "--identity".into(),
        identity.into(),
        "--lease-duration".into(),
        "3s".into(),
    ]);
    let p = Proc::start("switchyard-control-plane", &args, &[], dir);
    (p, grpc)
}

fn ctl(etcd: &str, args: &[&str]) -> String {
    let bin = switchyard_tests::procs::bin_dir().join("switchyard-control-plane");
    let out = std::process::Command::new(bin)
        .args(["--source", &format!("etcd:{etcd}"), "--etcd-prefix", PREFIX])
        .args(args)
        .output()
        .expect("control plane command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn leader(client: &mut Client) -> Option<String> {
    let r = client
        .get(format!("{PREFIX}status/leader"), None)
        .await
        .ok()?;
    r.kvs().first()?.value_str().ok().map(str::to_owned)
}

#[tokio::test]
async fn a_fleet_runs_from_etcd() {
    let dir = temp_dir("etcd");
    let bin = tokio::task::spawn_blocking(switchyard_tests::kube::bin_dir)
        .await
        .expect("cluster binaries");
    let etcd = EtcdServer::start(&bin, &dir);
    let (_mock, mock_url) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock_url)).expect("write");

    // ---- Load a directory, as `kubectl apply -f DIR` would into a cluster.
    let mut client = eventually(DEADLINE, "etcd up", || async {
        Client::connect([etcd.url.as_str()], None).await.ok()
    })
    .await;
    let out = ctl(&etcd.url, &["load", &cfg.display().to_string()]);
    assert!(out.starts_with("stored "), "{out}");
    let route = client
        .get(format!("{PREFIX}LLMRoute/default/chat"), None)
        .await
        .expect("get");
    let text = route.kvs()[0].value_str().expect("utf-8").to_owned();
    assert!(text.contains("kind: LLMRoute"), "{text}");

    // ---- Two control planes on etcd, a data plane on the first.
    let tls = tls(&dir);
    // cp-1 reaches etcd through a relay the test can cut.
    let etcd_addr: SocketAddr = etcd
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("etcd address");
    let gate = TcpGate::start(etcd_addr).await;
    let (mut cp1, grpc1) = start_cp(&format!("http://{}", gate.addr), "cp-1", &tls, &dir);
    let (mut cp2, grpc2) = start_cp(&etcd.url, "cp-2", &tls, &dir);
    let cert = tls.client_cert(&dir, "dp-a");
    let (_dp, api, admin) =
        start_fleet_dp(grpc1, "dp-a", &tls.ca, Credential::Cert(&cert), &[], &dir);
    wait_ready(&admin).await;
    assert_eq!(status_of(&api, "chat").await, 200);

    // ---- A resource put into etcd is served; a deleted one is gone.
    client
        .put(
            format!("{PREFIX}LLMRoute/default/late"),
            "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: late}\nspec: {models: [late], backends: [{pool: builtin}]}\n",
            None,
        )
        .await
        .expect("put");
    until_status(&api, "late", 200, "the route put into etcd").await;
    let main_key = format!("{PREFIX}VirtualKey/default/main");
    let saved = client
        .get(main_key.as_str(), None)
        .await
        .expect("get")
        .kvs()[0]
        .value()
        .to_vec();
    client
        .delete(main_key.as_str(), None)
        .await
        .expect("delete");
    until_status(&api, "chat", 401, "the deleted key rejected").await;
    client
        .put(main_key.as_str(), saved, None)
        .await
        .expect("put");
    until_status(&api, "chat", 200, "the key put back").await;

    // ---- Status: the leader writes each resource's conditions beside it.
    let condition = |status: &serde_json::Value, t: &str| {
        status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t))
            .cloned()
            .unwrap_or_default()
    };
    let status = eventually(DEADLINE, "status of the late route", || async {
        let out = ctl(&etcd.url, &["status"]);
        let (_, json) = out
            .lines()
            .find(|l| l.starts_with("LLMRoute/default/late\t"))?
            .split_once('\t')?;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        (condition(&v, "Programmed")["status"] == "True").then_some(v)
    })
    .await;
    assert_eq!(condition(&status, "Accepted")["status"], "True", "{status}");
    assert!(
        condition(&status, "Programmed")["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("every connected data plane runs generation")),
        "{status}"
    );

    // ---- cp-1 loses etcd; the data plane keeps serving. Meanwhile a route is deleted and
    // the history compacted past what cp-1 saw: back, its watch cannot resume there, so it
    // reads the whole prefix again, and the delete arrives.
    gate.set_open(false);
    eventually(DEADLINE, "cp-1 to notice", || async {
        cp1.logs()
            .contains("etcd session ended; serving the last resources")
            .then_some(())
    })
    .await;
    assert_eq!(
        status_of(&api, "late").await,
        200,
        "the last good config serves"
    );
    client
        .delete(format!("{PREFIX}LLMRoute/default/late"), None)
        .await
        .expect("delete");
    client.put("/elsewhere", "x", None).await.expect("put");
    let rev = client
        .get(
            PREFIX,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("get")
        .header()
        .map(|h| h.revision())
        .expect("revision");
    client
        .compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_of(&api, "late").await,
        200,
        "cp-1 cannot have seen it"
    );
    gate.set_open(true);
    until_status(&api, "late", 404, "the delete made during the partition").await;
    assert!(
        cp1.logs()
            .contains("etcd compacted past the last revision seen"),
        "{}",
        cp1.logs()
    );

    // ---- SIGTERM on the leader in the middle of a stream of changes: its lease is revoked
    // on the way out, so the leader key names the other replica long before the lease would
    // have run out, and no change is lost: a data plane on the surviving replica runs the
    // last version, and status reports it.
    let first = eventually(DEADLINE, "a leader", || async {
        leader(&mut client.clone()).await
    })
    .await;
    let cert_b = tls.client_cert(&dir, "dp-b");
    let (_dp_b, api_b, admin_b) = start_fleet_dp_on(
        &[grpc2, grpc1],
        "dp-b",
        &tls.ca,
        Credential::Cert(&cert_b),
        &[],
        &dir,
    );
    wait_ready(&admin_b).await;
    let churn = {
        let mut client = client.clone();
        tokio::spawn(async move {
            for i in 1..=20 {
                let route = format!(
                    "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: churn}}\nspec: {{models: [churn-{i}], backends: [{{pool: builtin}}]}}\n"
                );
                client
                    .put(format!("{PREFIX}LLMRoute/default/churn"), route, None)
                    .await
                    .expect("put");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (leaving, other) = if first == "cp-1" {
        (&mut cp1, "cp-2")
    } else {
        (&mut cp2, "cp-1")
    };
    assert!(
        leaving.terminate(Duration::from_secs(10)),
        "exits on SIGTERM"
    );
    assert!(
        leaving.logs().contains("released the etcd lease"),
        "{}",
        leaving.logs()
    );
    assert_ne!(leader(&mut client).await.as_deref(), Some(first.as_str()));
    eventually(DEADLINE, "the other replica leads", || async {
        (leader(&mut client.clone()).await.as_deref() == Some(other)).then_some(())
    })
    .await;
    churn.await.expect("churn");
    until_status(&api_b, "churn-20", 200, "the last of the changes").await;
    assert_eq!(
        status_of(&api_b, "churn-19").await,
        404,
        "no older version lingers"
    );
    eventually(DEADLINE, "status of the last change", || async {
        let out = ctl(&etcd.url, &["status"]);
        let (_, json) = out
            .lines()
            .find(|l| l.starts_with("LLMRoute/default/churn\t"))?
            .split_once('\t')?;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        (v["observedGeneration"] == 20 && condition(&v, "Programmed")["status"] == "True")
            .then_some(())
    })
    .await;
}
