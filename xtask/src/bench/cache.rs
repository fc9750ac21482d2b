//! Scenario j: exact cache hits. A route with the exact cache on (route scope, memory tier),
//! on the same gateway and mock: the first request fills it, every later one is a hit.
//! Measured at c=1 and c=32 against the direct path to the mock in the same run.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};

use super::{Measured, wrk};

/// The cached route, appended to the bench config.
pub(super) const CONFIG: &str = "---\napiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: bench-cached}\nspec: {models: [bench-cached], backends: [{pool: mock, model: mock-gpt}], cache: {mode: Exact, scope: Route, ttl: 1h}}\n";

pub(super) fn run(
    gateway: &str,
    auth: &str,
    duration: Duration,
    body: &str,
    dir: &Path,
    direct: (f64, f64),
) -> Result<Measured> {
    let cached = body.replace("\"model\":\"bench\"", "\"model\":\"bench-cached\"");
    ensure!(cached != body, "the bench body names its model differently");
    let hdr = [("Authorization", auth)];
    // The fill.
    wrk(gateway, 1, Duration::from_secs(1), &hdr, &cached, dir)?;
    let c1 = wrk(gateway, 1, duration, &hdr, &cached, dir)?;
    let c32 = wrk(gateway, 32, duration, &hdr, &cached, dir)?;
    let summary = format!(
        "exact cache hits (memory tier): c=1 p50 {:.0} us against {:.0} us direct to the mock ({:.2}x), c=32 {:.0} req/s against {:.0} req/s direct ({:.0}%); errors {}",
        c1.p50_us,
        direct.0,
        c1.p50_us / direct.0.max(1.0),
        c32.rps,
        direct.1,
        100.0 * c32.rps / direct.1.max(1.0),
        c1.errors + c32.errors,
    );
    Ok(Measured {
        rows: vec![
            ("j: cache hit c=1".into(), c1),
            ("j: cache hit c=32".into(), c32),
        ],
        summary,
        targets: Vec::new(),
    })
}
