//! Shared setup for the end-to-end suites: temp dirs, config YAML, process wiring.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub mod limits;

use serde_json::{Value, json};
use switchyard_tests::certs::CertFiles;
use switchyard_tests::procs::{Proc, eventually, free_addr, reqwest_lite};

pub const CLIENT_KEY: &str = "sk-client-e2e-0001";
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-xyz";
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "switchyard-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

/// The base configuration: a pool of every provider kind on the mock upstream (OpenAI, Azure,
/// OpenAI-compatible, Anthropic, Gemini, Bedrock) and the built-in mock, routes, keys.
pub fn base_config(mock_url: &str) -> String {
    let (aws_id, aws_secret) = (
        switchyard_tests::mock::MOCK_AWS_ACCESS_KEY_ID,
        switchyard_tests::mock::MOCK_AWS_SECRET_ACCESS_KEY,
    );
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: upstream-cred}}
stringData: {{api-key: {UPSTREAM_KEY}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: client-keys}}
stringData:
  main: {CLIENT_KEY}
  expired: sk-expired-key-0001
  disabled: sk-disabled-key-0001
  limited: sk-limited-key-0001
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: openai}}
spec:
  provider: openai
  endpoints: [{{url: "{mock_url}/v1", credentialSecretRef: {{name: upstream-cred, key: api-key}}}}]
  models: [{{name: mock-gpt}}, {{name: mock-gpt-mini}}]
  timeouts: {{firstByte: 1500ms, total: 20s}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: anthropic}}
spec:
  provider: anthropic
  endpoints: [{{url: "{mock_url}", credentialSecretRef: {{name: upstream-cred, key: api-key}}}}]
  models: [{{name: claude-mock}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: azure}}
spec:
  provider: azure-openai
  endpoints: [{{url: "{mock_url}", credentialSecretRef: {{name: upstream-cred, key: api-key}}}}]
  azure: {{apiVersion: "2024-10-21"}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: builtin}}
spec:
  provider: mock
  models: [{{name: demo}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: compat}}
spec:
  provider: openai-compatible
  endpoints: [{{url: "{mock_url}/v1", credentialSecretRef: {{name: upstream-cred, key: api-key}}}}]
  models: [{{name: deepseek-reasoner}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: gemini}}
spec:
  provider: gemini
  endpoints: [{{url: "{mock_url}", credentialSecretRef: {{name: upstream-cred, key: api-key}}}}]
  models: [{{name: gemini-2.5-flash}}, {{name: text-embedding-004}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: aws}}
stringData: {{AWS_ACCESS_KEY_ID: {aws_id}, AWS_SECRET_ACCESS_KEY: "{aws_secret}"}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: bedrock}}
spec:
  provider: bedrock
  bedrock: {{region: us-west-2}}
  endpoints: [{{url: "{mock_url}", awsCredentialsSecretRef: {{name: aws}}}}]
  models: [{{name: "anthropic.claude-3-5-sonnet-20240620-v1:0"}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec:
  models: [chat, "gpt-*", "mock-*"]
  backends: [{{pool: openai, model: mock-gpt}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: claude}}
spec:
  models: [claude]
  backends: [{{pool: anthropic, model: claude-mock}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: azure}}
spec:
  models: [azure-chat, text-embedding]
  backends: [{{pool: azure, model: my-deployment}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: embed}}
spec:
  models: [embed]
  backends: [{{pool: openai, model: mock-gpt-mini}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: demo}}
spec:
  models: [demo]
  backends: [{{pool: builtin}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: compat}}
spec:
  models: [compat-chat]
  backends: [{{pool: compat, model: deepseek-reasoner}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: gemini}}
spec:
  models: [gemini-chat]
  backends: [{{pool: gemini, model: gemini-2.5-flash}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: gemini-embed}}
spec:
  models: [gemini-embed]
  backends: [{{pool: gemini, model: text-embedding-004}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: bedrock}}
spec:
  models: [bedrock-chat]
  backends: [{{pool: bedrock, model: "anthropic.claude-3-5-sonnet-20240620-v1:0"}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: main}}
spec: {{secretRef: {{name: client-keys, key: main}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: expired}}
spec: {{secretRef: {{name: client-keys, key: expired}}, expiresAt: "2020-01-01T00:00:00Z"}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: disabled}}
spec: {{secretRef: {{name: client-keys, key: disabled}}, disabled: true}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: limited}}
spec: {{secretRef: {{name: client-keys, key: limited}}, allowedModels: [demo]}}
"#
    )
}

/// A mock upstream process.
pub fn start_mock(log_dir: &Path) -> (Proc, String) {
    let addr = free_addr();
    let p = Proc::start(
        "switchyard-mock-llm",
        &["--listen".into(), addr.to_string()],
        &[],
        log_dir,
    );
    (p, format!("http://{addr}"))
}

/// How a fleet data plane proves itself to the control plane.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// A client certificate (mTLS).
    Cert(&'a CertFiles),
    /// A file holding a ServiceAccount token.
    TokenFile(&'a Path),
}

impl Credential<'_> {
    fn args(self) -> Vec<String> {
        match self {
            Credential::Cert(c) => vec![
                "--client-cert".into(),
                c.cert.display().to_string(),
                "--client-key".into(),
                c.key.display().to_string(),
            ],
            Credential::TokenFile(p) => {
                vec!["--control-plane-token-file".into(), p.display().to_string()]
            }
        }
    }
}

/// A fleet-mode data plane streaming from the control plane at `grpc` over TLS verified with
/// `ca`, authenticated with `cred`, with `extra` flags. Returns the process, API URL and admin
/// URL.
pub fn start_fleet_dp(
    grpc: std::net::SocketAddr,
    node: &str,
    ca: &Path,
    cred: Credential<'_>,
    extra: &[&str],
    log_dir: &Path,
) -> (Proc, String, String) {
    start_fleet_dp_on(&[grpc], node, ca, cred, extra, log_dir)
}

/// A data plane given several control-plane replicas, tried in turn.
pub fn start_fleet_dp_on(
    grpcs: &[std::net::SocketAddr],
    node: &str,
    ca: &Path,
    cred: Credential<'_>,
    extra: &[&str],
    log_dir: &Path,
) -> (Proc, String, String) {
    let (api, admin) = (free_addr(), free_addr());
    let urls: Vec<String> = grpcs
        .iter()
        .map(|g| format!("https://localhost:{}", g.port()))
        .collect();
    let mut args = vec![
        "--control-plane".into(),
        urls.join(","),
        "--control-plane-ca".into(),
        ca.display().to_string(),
        "--node-id".into(),
        node.into(),
        "--listen".into(),
        api.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
    ];
    args.extend(cred.args());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let p = Proc::start("switchyard-data-plane", &args, &[], log_dir);
    (p, format!("http://{api}"), format!("http://{admin}"))
}

/// What a bare config-stream client got from the control plane.
#[derive(Debug)]
pub enum StreamOutcome {
    /// A snapshot of this version arrived: the client was trusted with the configuration.
    Snapshot(String),
    /// The server refused the stream with a gRPC status.
    Refused(tonic::Code, String),
    /// The connection failed below gRPC (e.g. the TLS handshake).
    Failed(String),
}

/// Opens `StreamConfig` as any process could: TLS verified with `ca`, optionally a bearer
/// token and a client certificate, claiming `node`. Reports what came back first.
pub async fn open_config_stream(
    grpc: std::net::SocketAddr,
    ca: &Path,
    node: &str,
    token: Option<&str>,
    cert: Option<&CertFiles>,
) -> StreamOutcome {
    use switchyard_proto::v1 as pb;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .domain_name("localhost");
    if let Some(c) = cert {
        tls = tls.identity(Identity::from_pem(read(&c.cert), read(&c.key)));
    }
    let endpoint = Endpoint::from_shared(format!("https://localhost:{}", grpc.port()))
        .and_then(|e| e.tls_config(tls))
        .unwrap_or_else(|e| panic!("endpoint: {e}"))
        .connect_timeout(Duration::from_secs(5));
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return StreamOutcome::Failed(format!("connect: {e:?}")),
    };
    let mut client = pb::config_discovery_client::ConfigDiscoveryClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx
        .send(pb::DiscoveryRequest {
            node_id: node.into(),
            ..Default::default()
        })
        .await;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("token as metadata"),
        );
    }
    let outcome = async {
        let mut inbound = match client.stream_config(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return StreamOutcome::Refused(s.code(), s.message().to_owned()),
        };
        match inbound.message().await {
            Ok(Some(r)) => StreamOutcome::Snapshot(r.version_info),
            Ok(None) => StreamOutcome::Failed("stream closed".into()),
            Err(s) => StreamOutcome::Refused(s.code(), s.message().to_owned()),
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .unwrap_or_else(|_| StreamOutcome::Failed("no answer in 10s".into()));
    drop(tx);
    result
}

/// Asserts a stream was refused with `code` (and so never saw a snapshot).
pub fn assert_refused(outcome: &StreamOutcome, code: tonic::Code, what: &str) {
    match outcome {
        StreamOutcome::Refused(c, _) if *c == code => {}
        other => panic!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// A standalone data plane on `dir`. Returns the process, API URL and admin URL.
pub fn start_standalone(dir: &Path, extra: &[&str], log_dir: &Path) -> (Proc, String, String) {
    let (api, admin) = (free_addr(), free_addr());
    let mut args = vec![
        "--config".into(),
        dir.display().to_string(),
        "--listen".into(),
        api.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let p = Proc::start("switchyard-data-plane", &args, &[], log_dir);
    (p, format!("http://{api}"), format!("http://{admin}"))
}

pub async fn wait_ready(admin: &str) {
    let c = reqwest_lite::Client::default();
    eventually(DEADLINE, &format!("{admin}/readyz"), || async {
        c.get_status(&format!("{admin}/readyz"))
            .await
            .filter(|s| *s == 200)
    })
    .await;
}

pub async fn wait_up(url: &str) {
    let c = reqwest_lite::Client::default();
    eventually(DEADLINE, &format!("{url} up"), || async {
        c.get_status(url).await
    })
    .await;
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

pub fn chat_body(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

/// POSTs JSON with the client key; returns status, headers and body as JSON.
pub async fn post(
    url: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = client().post(url).json(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

/// Requests recorded by the mock upstream.
pub async fn mock_requests(mock_url: &str) -> Vec<Value> {
    let c = reqwest_lite::Client::default();
    let (_, body) = c
        .get_text(&format!("{mock_url}/_mock/requests"))
        .await
        .unwrap_or_default();
    serde_json::from_str::<Vec<Value>>(&body).unwrap_or_default()
}

/// Asserts an OpenAI-style error body with the given status.
pub fn assert_openai_error(status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "body: {body}");
    let err = &body["error"];
    assert!(err.is_object(), "not an OpenAI error body: {body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string(), "{body}");
}

/// The control plane's serving certificate and the CA data planes trust; the same CA issues
/// the data planes' client certificates (CN = node id).
#[derive(Clone)]
pub struct Tls {
    pub ca: std::path::PathBuf,
    pub issuer: std::sync::Arc<switchyard_tests::certs::TestCa>,
    pub server: switchyard_tests::certs::CertFiles,
}

impl Tls {
    pub fn client_cert(&self, dir: &Path, node: &str) -> switchyard_tests::certs::CertFiles {
        self.issuer
            .issue(dir, &format!("client-{node}"), node, &[], &[])
            .expect("client cert")
    }
}

impl Tls {
    /// A control plane's flags: serve with this certificate, admit data planes whose client
    /// certificate this CA signed.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.server.cert.display().to_string(),
            "--tls-key".into(),
            self.server.key.display().to_string(),
            "--client-ca".into(),
            self.ca.display().to_string(),
        ]
    }
}

pub fn tls(dir: &Path) -> Tls {
    let ca = switchyard_tests::certs::TestCa::new(dir, "planes").expect("ca");
    let server = ca
        .issue(
            dir,
            "control-plane",
            "switchyard-control-plane",
            &["localhost", "127.0.0.1"],
            &[],
        )
        .expect("cert");
    Tls {
        ca: ca.cert_file.clone(),
        issuer: std::sync::Arc::new(ca),
        server,
    }
}

/// The status of a chat request for `model` with the main client key.
pub async fn status_of(api: &str, model: &str) -> u16 {
    post(
        &format!("{api}/v1/chat/completions"),
        Some(CLIENT_KEY),
        &chat_body(model, "hi"),
    )
    .await
    .0
}

/// Waits until a chat request for `model` gets `want`.
pub async fn until_status(api: &str, model: &str, want: u16, what: &str) {
    eventually(DEADLINE, what, || async move {
        (status_of(api, model).await == want).then_some(())
    })
    .await;
}

/// The sum of a data plane's metric lines that start with `name` (a name, or a name and the
/// start of its labels).
pub async fn metric(admin: &str, name: &str) -> f64 {
    let (_, text) = reqwest_lite::Client::default()
        .get_text(&format!("{admin}/metrics"))
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
