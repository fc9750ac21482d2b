//! A real Kubernetes control plane on loopback: etcd, kube-apiserver (RBAC on, static tokens)
//! and kube-controller-manager (garbage collection), built by `tests/kube-env/build.sh`. No
//! pods run; the operator and proxies run as local processes against this API server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::certs::{TestCa, key_pair_files};
use crate::procs::{Proc, eventually, free_port, workspace_root};

/// Namespace the operator runs in (its Leases live there).
pub const SYSTEM_NAMESPACE: &str = "switchyard-system";
/// Release name used when installing the chart; fixes the operator's ServiceAccount name.
pub const RELEASE: &str = "sy";
/// The ServiceAccount the chart creates for the operator.
pub const OPERATOR_SA: &str = "sy-switchyard-control-plane";
const ADMIN_TOKEN: &str = "switchyard-e2e-admin-token";
const OPERATOR_TOKEN: &str = "switchyard-e2e-operator-token";

/// The cluster binaries (built once, cached by version).
pub fn bin_dir() -> PathBuf {
    let script = workspace_root().join("tests/kube-env/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "building cluster binaries failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A running cluster. Dropping it stops every process.
#[derive(Debug)]
pub struct KubeEnv {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub server: String,
    /// kubeconfig with cluster-admin rights.
    pub admin_kubeconfig: PathBuf,
    /// kubeconfig of the operator's ServiceAccount identity: only the chart's RBAC applies.
    pub operator_kubeconfig: PathBuf,
    controller_manager: Option<Proc>,
    apiserver: Proc,
    etcd: Proc,
}

fn kubeconfig(server: &str, ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\n    namespace: default\ncurrent-context: e2e\n",
        ca.display()
    )
}

impl KubeEnv {
    /// Starts etcd, kube-apiserver and kube-controller-manager, and waits for readiness.
    pub async fn start(dir: &Path) -> Self {
        let bin = tokio::task::spawn_blocking(bin_dir)
            .await
            .unwrap_or_else(|e| panic!("build task: {e}"));
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(dir.join("etcd")).unwrap_or_else(|e| panic!("etcd dir: {e}"));
        let (client_port, peer_port) = (free_port(), free_port());
        let etcd = Proc::start_path(
            &bin.join("etcd"),
            &[
                "--name=e2e".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=e2e=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &dir,
        );

        let ca = TestCa::new(&dir, "kube").unwrap_or_else(|e| panic!("ca: {e}"));
        let serving = ca
            .issue(
                &dir,
                "apiserver",
                "kube-apiserver",
                &["localhost", "127.0.0.1", "kubernetes.default.svc"],
                &[],
            )
            .unwrap_or_else(|e| panic!("cert: {e}"));
        let (sa_key, sa_pub) = key_pair_files(&dir, "sa").unwrap_or_else(|e| panic!("sa key: {e}"));
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "{ADMIN_TOKEN},e2e-admin,uid-admin,\"system:masters\"\n{OPERATOR_TOKEN},system:serviceaccount:{SYSTEM_NAMESPACE}:{OPERATOR_SA},uid-operator,\"system:serviceaccounts,system:serviceaccounts:{SYSTEM_NAMESPACE},system:authenticated\"\n"
            ),
        )
        .unwrap_or_else(|e| panic!("tokens: {e}"));
        let port = free_port();
        let server = format!("https://127.0.0.1:{port}");
        let apiserver = Proc::start_path(
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers=http://127.0.0.1:{client_port}"),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--tls-cert-file={}", serving.cert.display()),
                format!("--tls-private-key-file={}", serving.key.display()),
                format!("--token-auth-file={}", tokens.display()),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", sa_pub.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--allow-privileged=true".into(),
                format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                "--v=0".into(),
            ],
            &dir,
        );
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        let operator_kubeconfig = dir.join("operator.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig(&server, &ca.cert_file, "e2e-admin", ADMIN_TOKEN),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            &operator_kubeconfig,
            kubeconfig(&server, &ca.cert_file, "operator", OPERATOR_TOKEN),
        )
        .unwrap_or_else(|e| panic!("{e}"));

        let mut env = Self {
            bin,
            dir,
            server,
            admin_kubeconfig,
            operator_kubeconfig,
            controller_manager: None,
            apiserver,
            etcd,
        };
        eventually(
            Duration::from_secs(90),
            "kube-apiserver /readyz",
            || async {
                env.kubectl(&["get", "--raw=/readyz"])
                    .ok()
                    .filter(|o| o.trim() == "ok")
                    .map(|_| ())
            },
        )
        .await;
        let km = Proc::start_path(
            &env.bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", env.admin_kubeconfig.display()),
                "--leader-elect=false".into(),
                "--controllers=garbagecollector,namespace".into(),
                format!("--service-account-private-key-file={}", sa_key.display()),
                format!("--root-ca-file={}", ca.cert_file.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                "--use-service-account-credentials=false".into(),
            ],
            &env.dir,
        );
        env.controller_manager = Some(km);
        env
    }

    /// Runs kubectl as the admin; Ok(stdout) on success, Err(stderr) otherwise.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_stdin(args, None)
    }

    /// kubectl with `stdin` piped in.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        run_with_stdin(
            Command::new(self.bin.join("kubectl"))
                .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
                .args(args),
            stdin,
        )
    }

    /// Runs helm as the admin.
    pub fn helm(&self, args: &[&str]) -> Result<String, String> {
        run_with_stdin(
            Command::new(self.bin.join("helm"))
                .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
                .args(args)
                .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
                .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
                .env("HELM_DATA_HOME", self.dir.join("helm/data")),
            None,
        )
    }

    /// Whether every process is still up.
    pub fn running(&mut self) -> bool {
        self.etcd.running()
            && self.apiserver.running()
            && self.controller_manager.as_mut().is_none_or(Proc::running)
    }
}

fn run_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}
