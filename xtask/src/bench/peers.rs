//! Peer gateways for `cargo xtask bench --peers`: LiteLLM's proxy and Portkey's gateway,
//! installed on first use under `bench-results/peers/` and pointed at the same mock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use super::{KEY, Proc, free_port, spawn, wait_http};

/// A started peer: its process, chat URL and the headers its requests need.
type RunningPeer = (Proc, String, Vec<(String, String)>);

#[derive(Clone, Copy, Debug)]
pub(super) enum Peer {
    LiteLlm,
    Portkey,
}

impl Peer {
    pub(super) fn name(self) -> &'static str {
        match self {
            Peer::LiteLlm => "litellm",
            Peer::Portkey => "portkey",
        }
    }

    pub(super) fn version(self, _root: &Path, work: &Path) -> String {
        match self {
            Peer::LiteLlm => Command::new(work.join("peers/litellm-venv/bin/python"))
                .args([
                    "-c",
                    "import importlib.metadata as m; print('litellm', m.version('litellm'))",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default(),
            Peer::Portkey => std::fs::read_to_string(
                work.join("peers/portkey/node_modules/@portkey-ai/gateway/package.json"),
            )
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .map(|v| {
                format!(
                    "@portkey-ai/gateway {}",
                    v["version"].as_str().unwrap_or("?")
                )
            })
            .unwrap_or_default(),
        }
    }
}

/// Installs (on first use) and starts a peer gateway against the mock. Returns the process,
/// its chat URL and the headers its requests need.
pub(super) fn start_peer(peer: Peer, _root: &Path, work: &Path, mock: &str) -> Result<RunningPeer> {
    let dir = work.join("peers");
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    match peer {
        Peer::LiteLlm => {
            let venv = dir.join("litellm-venv");
            if !venv.join("bin/litellm").exists() {
                println!("installing litellm[proxy]==1.106.0 into {}", venv.display());
                if !Command::new("python3")
                    .arg("-m")
                    .arg("venv")
                    .arg(&venv)
                    .status()?
                    .success()
                    || !Command::new(venv.join("bin/pip"))
                        .args(["install", "-q", "litellm[proxy]==1.106.0"])
                        .status()?
                        .success()
                {
                    bail!("installing litellm failed");
                }
            }
            let cfg = dir.join("litellm.yaml");
            std::fs::write(
                &cfg,
                format!(
                    "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/mock-gpt\n      api_base: {mock}/v1\n      api_key: sk-upstream\ngeneral_settings:\n  master_key: {KEY}\nlitellm_settings:\n  drop_params: true\n"
                ),
            )?;
            let p = spawn(
                "litellm",
                Some("0"),
                &venv.join("bin/litellm"),
                &[
                    "--config".into(),
                    cfg.display().to_string(),
                    "--port".into(),
                    port.to_string(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--num_workers".into(),
                    "1".into(),
                ],
                &[("LITELLM_LOG", "ERROR")],
                &dir.join("litellm.log"),
            )?;
            wait_http(
                &format!("http://127.0.0.1:{port}/health/liveliness"),
                Duration::from_secs(120),
            )?;
            Ok((
                p,
                format!("http://127.0.0.1:{port}/v1/chat/completions"),
                vec![("Authorization".into(), format!("Bearer {KEY}"))],
            ))
        }
        Peer::Portkey => {
            let pkg = dir.join("portkey");
            let entry = pkg.join("node_modules/@portkey-ai/gateway/build/start-server.js");
            if !entry.exists() {
                std::fs::create_dir_all(&pkg)?;
                println!("installing @portkey-ai/gateway into {}", pkg.display());
                if !Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "@portkey-ai/gateway"])
                    .current_dir(&pkg)
                    .status()?
                    .success()
                {
                    bail!("installing @portkey-ai/gateway failed");
                }
            }
            if !entry.exists() {
                bail!("{} not found after install", entry.display());
            }
            let node = PathBuf::from("node");
            let p = spawn(
                "portkey",
                Some("0"),
                &which(&node)?,
                &[entry.display().to_string(), format!("--port={port}")],
                &[],
                &dir.join("portkey.log"),
            )?;
            wait_http(
                &format!("http://127.0.0.1:{port}/"),
                Duration::from_secs(60),
            )?;
            Ok((
                p,
                format!("http://127.0.0.1:{port}/v1/chat/completions"),
                vec![
                    ("Authorization".into(), "Bearer sk-upstream".into()),
                    ("x-portkey-provider".into(), "openai".into()),
                    ("x-portkey-custom-host".into(), format!("{mock}/v1")),
                ],
            ))
        }
    }
}

fn which(bin: &Path) -> Result<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {}", bin.display()))
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if p.is_empty() {
        bail!("{} not found on PATH", bin.display());
    }
    Ok(PathBuf::from(p))
}
