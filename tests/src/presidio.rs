//! A real Microsoft Presidio (analyzer with spaCy NER) behind the guardrail webhook protocol,
//! on a free loopback port: `tests/presidio/server.py` in the venv `tests/presidio/setup.sh`
//! builds (cached by version).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::procs::{Proc, free_port, workspace_root};

/// A Presidio webhook owned by a test.
#[derive(Debug)]
pub struct Presidio {
    proc: Proc,
    pub port: u16,
}

impl Presidio {
    /// Starts the webhook; findings of the `block` entity types (Presidio names such as
    /// `US_SSN`) answer `block`, others `redact`. Waits until the model is loaded.
    pub fn start(log_dir: &Path, block: &[&str]) -> Self {
        let setup = workspace_root().join("tests/presidio/setup.sh");
        let out = Command::new("bash")
            .arg(&setup)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", setup.display()));
        assert!(
            out.status.success(),
            "setting up Presidio failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let port = free_port();
        let proc = Proc::start_path(
            Path::new(&python),
            &[
                workspace_root()
                    .join("tests/presidio/server.py")
                    .display()
                    .to_string(),
                port.to_string(),
                "--block".to_owned(),
                block.join(","),
            ],
            log_dir,
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while !proc.logs().contains("ready") {
            assert!(
                Instant::now() < deadline,
                "Presidio did not start:\n{}",
                proc.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { proc, port }
    }

    /// The webhook's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/check", self.port)
    }

    /// What the server logged.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }
}
