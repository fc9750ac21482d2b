//! Scenario i: the audit trail's cost on the request path. Three gateways on the bench
//! config, started alike (pinned to CPU 0, one worker): without the trail, writing signed
//! JSON-lines files, and writing files plus the fleet's Redis stream (when Redis is
//! installed). Each is measured at c=1 (added latency) and c=32 (throughput).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{Measured, wrk};

pub(super) fn run(
    bin: &Path,
    work: &Path,
    duration: Duration,
    auth: &str,
    body: &str,
) -> Result<Measured> {
    let dir = work.join("audit");
    let _ = std::fs::remove_dir_all(&dir);
    let key = work.join("audit.key");
    // 32 bytes or more, as the data plane requires.
    std::fs::write(&key, "bench-audit-key-of-thirty-two-bytes!")?;
    let files = vec![
        "--audit-dir".to_owned(),
        dir.display().to_string(),
        "--audit-key-file".into(),
        key.display().to_string(),
    ];
    let redis = super::limits::start_redis(work)?;
    let mut variants = vec![("off", Vec::new()), ("files", files.clone())];
    if let Some((_, url)) = &redis {
        let mut both = files;
        both.extend(["--audit-redis-url".to_owned(), url.clone()]);
        variants.push(("files+redis", both));
    }
    let headers = [("Authorization", auth)];
    let mut rows = Vec::new();
    for (name, extra) in &variants {
        let (_gw, url) =
            super::limits::start_gateway(bin, work, "config", &format!("audit-{name}"), extra)?;
        for c in [1u32, 32] {
            let r = wrk(&url, c, duration, &headers, body, work)?;
            rows.push((format!("i: audit {name} c={c}"), r));
        }
    }
    let names: Vec<&str> = variants.iter().map(|(n, _)| *n).collect();
    let (off, parts) = super::against_first(&rows, "i: audit", &names);
    let lines = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .map(|t| t.lines().count())
                .sum::<usize>()
        })
        .unwrap_or(0);
    let summary = format!(
        "audit trail off: c=1 p50 {:.0} us, c=32 {:.0} req/s; {}; {lines} audit lines written",
        off.0.p50_us,
        off.1.rps,
        parts.join("; ")
    );
    Ok(Measured {
        rows,
        summary,
        targets: Vec::new(),
    })
}
