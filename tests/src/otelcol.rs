//! A real OpenTelemetry Collector (built from Go modules by `tests/otelcol/build.sh`, cached
//! by version) on free loopback ports: an OTLP receiver (gRPC and HTTP) and file exporters
//! writing what arrives as OTLP JSON lines, which [`Collector::spans`] and
//! [`Collector::metrics`] parse.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::procs::{Proc, free_port, workspace_root};

/// A collector owned by a test.
#[derive(Debug)]
pub struct Collector {
    proc: Option<Proc>,
    binary: PathBuf,
    config: PathBuf,
    log_dir: PathBuf,
    pub grpc_port: u16,
    pub http_port: u16,
    traces: PathBuf,
    metrics: PathBuf,
}

/// The collector binary, built on first use.
pub fn binary() -> PathBuf {
    let build = workspace_root().join("tests/otelcol/build.sh");
    let out = Command::new("bash")
        .arg(&build)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", build.display()));
    assert!(
        out.status.success(),
        "building the collector failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl Collector {
    /// Starts a collector writing into files under `dir`; waits until it listens.
    pub fn start(dir: &Path) -> Self {
        let (grpc_port, http_port) = (free_port(), free_port());
        let traces = dir.join("traces.jsonl");
        let metrics = dir.join("metrics.jsonl");
        let config = dir.join("otelcol.yaml");
        std::fs::write(
            &config,
            format!(
                r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc_port}
      http:
        endpoint: 127.0.0.1:{http_port}
exporters:
  file/traces:
    path: {traces}
    format: json
    flush_interval: 100ms
  file/metrics:
    path: {metrics}
    format: json
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: info
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file/traces]
    metrics:
      receivers: [otlp]
      exporters: [file/metrics]
"#,
                traces = traces.display(),
                metrics = metrics.display(),
            ),
        )
        .unwrap_or_else(|e| panic!("writing the collector config: {e}"));
        let mut c = Self {
            proc: None,
            binary: binary(),
            config,
            log_dir: dir.to_path_buf(),
            grpc_port,
            http_port,
            traces,
            metrics,
        };
        c.restart();
        c
    }

    /// Starts the collector (again, after [`Collector::kill`]) on the same ports and files.
    pub fn restart(&mut self) {
        let proc = Proc::start_path(
            &self.binary,
            &[format!("--config=file:{}", self.config.display())],
            &self.log_dir,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.grpc_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the collector did not start:\n{}",
                proc.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Some(proc);
    }

    /// Kills the collector (an outage).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// The OTLP/gRPC endpoint.
    pub fn grpc(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The OTLP/HTTP endpoint (the signal paths are appended by the exporter).
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// What the collector logged.
    pub fn logs(&self) -> String {
        self.proc.as_ref().map(Proc::logs).unwrap_or_default()
    }

    /// Every span received so far, flattened with its resource's attributes.
    pub fn spans(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for line in read_lines(&self.traces) {
            for rs in arr(&line["resourceSpans"]) {
                let resource = attributes(&rs["resource"]["attributes"]);
                for ss in arr(&rs["scopeSpans"]) {
                    for s in arr(&ss["spans"]) {
                        out.push(Span {
                            trace_id: str_of(&s["traceId"]),
                            span_id: str_of(&s["spanId"]),
                            parent_span_id: str_of(&s["parentSpanId"]),
                            name: str_of(&s["name"]),
                            kind: s["kind"].as_i64().unwrap_or(0),
                            attributes: attributes(&s["attributes"]),
                            events: arr(&s["events"])
                                .iter()
                                .map(|e| (str_of(&e["name"]), attributes(&e["attributes"])))
                                .collect(),
                            links: arr(&s["links"])
                                .iter()
                                .map(|l| (str_of(&l["traceId"]), str_of(&l["spanId"])))
                                .collect(),
                            status_code: s["status"]["code"].as_i64().unwrap_or(0),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Every metric data point received so far: (metric name, point attributes, point).
    pub fn metrics(&self) -> Vec<(String, serde_json::Map<String, Value>, Value)> {
        let mut out = Vec::new();
        for line in read_lines(&self.metrics) {
            for rm in arr(&line["resourceMetrics"]) {
                for sm in arr(&rm["scopeMetrics"]) {
                    for m in arr(&sm["metrics"]) {
                        let name = str_of(&m["name"]);
                        for kind in ["histogram", "sum", "gauge"] {
                            for p in arr(&m[kind]["dataPoints"]) {
                                out.push((name.clone(), attributes(&p["attributes"]), p.clone()));
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A span as the collector received it.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i64,
    pub attributes: serde_json::Map<String, Value>,
    pub events: Vec<(String, serde_json::Map<String, Value>)>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i64,
    pub resource: serde_json::Map<String, Value>,
}

impl Span {
    /// An attribute as a string (ints and doubles too).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// OTLP JSON attributes (`[{key, value: {stringValue|intValue|doubleValue|boolValue|arrayValue}}]`)
/// as plain JSON values (ints arrive as strings in OTLP JSON and are parsed back).
fn attributes(v: &Value) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for kv in arr(v) {
        let key = str_of(&kv["key"]);
        out.insert(key, any_value(&kv["value"]));
    }
    out
}

fn any_value(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(i) = v.get("intValue") {
        return match i {
            Value::String(s) => s.parse::<i64>().map_or(Value::Null, Value::from),
            other => other.clone(),
        };
    }
    if let Some(d) = v.get("doubleValue") {
        return d.clone();
    }
    if let Some(b) = v.get("boolValue") {
        return b.clone();
    }
    if let Some(a) = v.get("arrayValue") {
        return Value::Array(arr(&a["values"]).iter().map(any_value).collect());
    }
    Value::Null
}
