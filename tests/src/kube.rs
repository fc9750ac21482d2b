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
/// The ServiceAccount the chart creates for data planes (its tokens open config streams).
pub const DATA_PLANE_SA: &str = "sy-switchyard-data-plane";
/// The audience the chart gives data-plane tokens.
pub const TOKEN_AUDIENCE: &str = "switchyard-control-plane";
const ISSUER: &str = "https://kubernetes.default.svc";
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
    /// The key the API server signs ServiceAccount tokens with (PEM, PKCS#8 ECDSA P-256).
    sa_signing_key: PathBuf,
    controller_manager: Option<Proc>,
    apiserver: Proc,
    etcd: crate::etcd::EtcdServer,
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
        let etcd = crate::etcd::EtcdServer::start(&bin, &dir);

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
                format!("--etcd-servers={}", etcd.url),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--tls-cert-file={}", serving.cert.display()),
                format!("--tls-private-key-file={}", serving.key.display()),
                format!("--token-auth-file={}", tokens.display()),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-issuer={ISSUER}"),
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
            sa_signing_key: sa_key.clone(),
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

    /// Creates a Pod object running as `service_account`, for tokens to be bound to. No
    /// kubelet runs, so it stays Pending; its name and uid are what the tokens carry.
    pub fn create_pod(&self, namespace: &str, name: &str, service_account: &str) {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  serviceAccountName: {service_account}\n  automountServiceAccountToken: false\n  containers: [{{name: dp, image: switchyard.invalid/data-plane}}]\n"
        );
        self.kubectl_stdin(&["apply", "-f", "-"], Some(&yaml))
            .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
    }

    /// A token from the TokenRequest API (`kubectl create token`), bound to `pod` if given.
    pub fn request_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        pod: Option<&str>,
    ) -> String {
        let mut args = vec![
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--audience",
            audience,
            "--duration",
            "1h",
        ];
        if let Some(p) = pod {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", p]);
        }
        self.kubectl(&args)
            .unwrap_or_else(|e| panic!("kubectl create token: {e}"))
            .trim()
            .to_owned()
    }

    fn uid(&self, namespace: &str, kind: &str, name: &str) -> String {
        self.kubectl(&[
            "get",
            kind,
            name,
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .unwrap_or_else(|e| panic!("uid of {kind}/{name}: {e}"))
    }

    /// A pod-bound token expiring at `exp` (Unix seconds), signed with the cluster's own
    /// ServiceAccount key exactly as the API server signs them. TokenRequest cannot issue
    /// tokens shorter than ten minutes; expiry cases need this.
    pub fn mint_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        pod: &str,
        exp: i64,
    ) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = exp.min(unix_now());
        let claims = serde_json::json!({
            "aud": [audience],
            "exp": exp,
            "iat": now - 60,
            "nbf": now - 60,
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": pod, "uid": self.uid(namespace, "pod", pod)},
                "serviceaccount": {"name": service_account, "uid": self.uid(namespace, "serviceaccount", service_account)},
            },
        });
        let signing_input = format!(
            "{}.{}",
            b64.encode(br#"{"alg":"ES256","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        let pem = std::fs::read_to_string(&self.sa_signing_key)
            .unwrap_or_else(|e| panic!("reading the signing key: {e}"));
        let der = rcgen::KeyPair::from_pem(&pem)
            .unwrap_or_else(|e| panic!("parsing the signing key: {e}"))
            .serialize_der();
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &rng,
        )
        .unwrap_or_else(|e| panic!("loading the signing key: {e}"));
        let sig = key
            .sign(&rng, signing_input.as_bytes())
            .unwrap_or_else(|e| panic!("signing: {e}"));
        format!("{signing_input}.{}", b64.encode(sig.as_ref()))
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

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
