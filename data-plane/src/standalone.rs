//! Standalone mode: compile a directory of YAML in-process and hot-reload it on change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::Gateway;

/// How often the directory is checked for changes.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Loads, compiles and applies the directory once. Diagnostics are logged; invalid resources
/// are left out and the rest is served.
pub(crate) fn load(
    gw: &Gateway,
    dir: &Path,
    cache: &mut switchyard_crds::fs::DirCache,
) -> std::io::Result<()> {
    let world = cache.load(dir)?;
    let compiled = switchyard_crds::compile(&world);
    for d in &compiled.diagnostics {
        tracing::warn!(resource = %d.resource, condition = d.condition, reason = d.reason, message = %d.message, "resource rejected");
    }
    if gw.version().as_deref() == Some(compiled.snapshot.version.as_str()) {
        return Ok(());
    }
    // Resources that cannot run here are logged by `apply`; the rest serves.
    gw.apply(&compiled.snapshot);
    Ok(())
}

/// Watches the directory forever, reloading when its files change.
pub(crate) async fn watch(
    gw: Arc<Gateway>,
    dir: PathBuf,
    mut last: Option<u64>,
    mut cache: switchyard_crds::fs::DirCache,
) {
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let fp = match switchyard_crds::fs::fingerprint(&dir) {
            Ok(fp) => fp,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "config directory unreadable; keeping the last good config");
                continue;
            }
        };
        if last == Some(fp) {
            continue;
        }
        last = Some(fp);
        // Parsing and compiling a large directory is CPU work: keep it off the async workers.
        if let Err(e) = tokio::task::block_in_place(|| load(&gw, &dir, &mut cache)) {
            tracing::warn!(dir = %dir.display(), error = %e, "reload failed; keeping the last good config");
        }
    }
}
