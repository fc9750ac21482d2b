//! The second direct path: `nginx` with one worker answering every request with a canned chat
//! completion. nginx is faster than the bench's own mock, so the gateway's ratio against it is
//! the honest one (the mock's slowness flatters the gateway).

use std::path::Path;

use anyhow::Result;

use super::{Proc, free_port, spawn, wait_http};

/// The canned answer: a complete OpenAI chat completion with usage.
const COMPLETION: &str = r#"{"id":"chatcmpl-nginx","object":"chat.completion","created":1700000000,"model":"mock-gpt","system_fingerprint":"fp_nginx","choices":[{"index":0,"message":{"role":"assistant","content":"tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15 ","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":230,"completion_tokens":16,"total_tokens":246}}"#;

/// Starts nginx on a free port pinned to CPU 1 (where the mock and wrk run); `None` when
/// nginx is not installed (`apt-get install nginx`).
pub(super) fn start(work: &Path) -> Result<Option<(Proc, String)>> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    let Some(bin) = bin else {
        return Ok(None);
    };
    let dir = work.join("nginx");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs"))?;
    let port = free_port();
    let conf = format!(
        r#"worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location = /healthz {{ return 200 "ok"; }}
        location / {{
            default_type application/json;
            return 200 '{COMPLETION}';
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let p = spawn(
        "nginx",
        Some("1"),
        bin,
        &[
            "-p".into(),
            dir.display().to_string(),
            "-c".into(),
            conf_path.display().to_string(),
        ],
        &[],
        &work.join("nginx.log"),
    )?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(
        &format!("{url}/healthz"),
        std::time::Duration::from_secs(10),
    )?;
    Ok(Some((p, url)))
}

/// A pool on nginx and the route `bench-nginx` to it.
pub(super) fn config(url: &str) -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: ProviderPool\nmetadata: {{name: nginx}}\nspec:\n  provider: openai\n  endpoints: [{{url: \"{url}/v1\", credentialSecretRef: {{name: bench, key: upstream}}}}]\n  models: [{{name: mock-gpt}}]\n---\napiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: bench-nginx}}\nspec: {{models: [bench-nginx], backends: [{{pool: nginx, model: mock-gpt}}]}}\n"
    )
}
