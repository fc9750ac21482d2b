//! The audit trail end to end: a standalone data plane writes a record per request (served,
//! streamed, refused) into rotated, hash-chained files with signed checkpoints;
//! `switchyard-data-plane audit verify` passes them, and names the first line of every kind
//! of tampering. The fleet's Redis stream: a Redis outage never blocks a request, records
//! are held up to a bound and then dropped (counted, and said so in the chain), and
//! `audit export` drains the stream into files that verify.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard_tests::procs::{bin_dir, eventually};
use switchyard_tests::redis::RedisServer;

const KEY: &str = "audit-hmac-key-of-the-fleet-32-bytes-or-more";

/// A route whose requests are recorded with their text, behind a redacting guardrail.
const AUDITED: &str = "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: audited}\nspec: {models: [audited], backends: [{pool: openai, model: mock-gpt}], audit: {includeText: true}}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: Guardrail\nmetadata: {name: pii}\nspec: {targets: {routes: [audited]}, phases: [Request, Response], pii: {entities: [Email], action: Redact}}\n";

fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    files
}

fn lines(files: &[PathBuf]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Runs `audit verify`; (exit code, what it printed).
fn verify(files: &[PathBuf], key_file: Option<&Path>) -> (i32, String) {
    let mut cmd = Command::new(bin_dir().join("switchyard-data-plane"));
    cmd.args(["audit", "verify"]);
    if let Some(k) = key_file {
        cmd.arg("--key-file").arg(k);
    }
    let out = cmd.args(files).output().expect("audit verify runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn stream_chat(api: &str, key: &str) -> String {
    client()
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "mock-gpt", "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "stream please"}]}))
        .send()
        .await
        .expect("stream")
        .text()
        .await
        .expect("body")
}

#[tokio::test]
async fn every_request_is_recorded_in_a_chain_that_shows_tampering() {
    let dir = temp_dir("audit-files");
    let (_mock, mock) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock)).expect("write");
    std::fs::write(cfg.join("audited.yaml"), AUDITED).expect("write");
    let key_file = dir.join("audit.key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key");
    let audit = dir.join("audit");
    let (mut dp, api, admin) = start_standalone(
        &cfg,
        &[
            "--audit-dir",
            &audit.display().to_string(),
            "--audit-key-file",
            &key_file.display().to_string(),
            "--audit-max-file-bytes",
            "3000",
        ],
        &dir,
    );
    wait_ready(&admin).await;

    // A served request, a stream, a bad key, an unknown model; each sends a traceparent.
    let url = format!("{api}/v1/chat/completions");
    let mut ids = Vec::new();
    for i in 0..12 {
        let resp = client()
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .header(
                "traceparent",
                format!("00-4bf92f3577b34da6a3ce929d0e0e{i:04x}-00f067aa0ba902b7-01"),
            )
            .json(&chat_body("mock-gpt", "hello audit"))
            .send()
            .await
            .expect("chat");
        assert_eq!(resp.status(), 200);
        ids.push(
            resp.headers()["x-request-id"]
                .to_str()
                .expect("id")
                .to_owned(),
        );
    }
    let sse = stream_chat(&api, CLIENT_KEY).await;
    assert!(sse.contains("[DONE]"), "{sse}");
    // A route that records text: after its guardrail redacted it, whole and streamed.
    let (s, _, b) = post(
        &url,
        Some(CLIENT_KEY),
        &chat_body("audited", "mock.echo=1 write to jane.doe@example.com today"),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let resp = client()
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "audited", "stream": true,
            "messages": [{"role": "user", "content": "mock.echo=1 stream to bob@example.org now"}]}))
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200);
    let sse = resp.text().await.expect("body");
    assert!(sse.contains("[DONE]") && !sse.contains("bob@"), "{sse}");
    let (s, _, _) = post(&url, Some("sk-not-a-key"), &chat_body("mock-gpt", "hi")).await;
    assert_eq!(s, 401);
    let (s, _, _) = post(&url, Some(CLIENT_KEY), &chat_body("no-such-model", "hi")).await;
    assert_eq!(s, 404);
    assert!(dp.terminate(Duration::from_secs(10)), "drains and exits");

    let files = audit_files(&audit);
    assert!(files.len() >= 2, "rotated at 3000 bytes: {files:?}");
    let all = lines(&files);
    let records: Vec<&Value> = all
        .iter()
        .filter(|l| l["kind"] == "request")
        .map(|l| &l["record"])
        .collect();
    assert_eq!(records.len(), 17, "one record per request: {all:#?}");
    assert!(
        records
            .iter()
            .filter(|r| r["route"] != "default/audited")
            .all(|r| r.get("prompt").is_none() && r.get("response").is_none()),
        "no text unless the route opts in"
    );
    let texts: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["route"] == "default/audited")
        .map(|r| {
            (
                r["prompt"].as_str().unwrap_or("?"),
                r["response"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        texts,
        [
            (
                "mock.echo=1 write to [EMAIL] today",
                "write to [EMAIL] today"
            ),
            ("mock.echo=1 stream to [EMAIL] now", "stream to [EMAIL] now"),
        ],
        "redacted text, whole and streamed"
    );
    let first = records
        .iter()
        .find(|r| r["request_id"] == ids[0])
        .expect("the first request's record");
    assert_eq!(first["status"], 200);
    assert_eq!(first["key"], "default/main", "{first}");
    assert_eq!(first["route"], "default/chat", "{first}");
    assert_eq!(first["model"], "mock-gpt");
    assert!(
        first["backend"].as_str().is_some_and(|b| !b.is_empty()),
        "{first}"
    );
    assert!(first["input_tokens"].as_u64() > Some(0), "{first}");
    assert!(first["output_tokens"].as_u64() > Some(0), "{first}");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e0000");
    assert_eq!(first["cache"], "none");
    let streamed = records
        .iter()
        .find(|r| r["stream"] == true)
        .expect("the stream's record");
    assert!(
        streamed["output_tokens"].as_u64() > Some(0),
        "usage at the end: {streamed}"
    );
    assert!(streamed.get("ended").is_none(), "{streamed}");
    assert!(
        records
            .iter()
            .any(|r| r["status"] == 401 && r["error"] == "invalid_key" && r.get("key").is_none()),
        "a refused key is recorded: {records:#?}"
    );
    assert!(records.iter().any(|r| r["status"] == 404));
    // Checkpoints: the start, one per rotated file, the close; all signed.
    let checkpoints: Vec<&Value> = all.iter().filter(|l| l["kind"] == "checkpoint").collect();
    assert_eq!(checkpoints[0]["reason"], "start");
    assert_eq!(all.last().expect("lines")["reason"], "close");
    assert!(checkpoints.iter().any(|c| c["reason"] == "rotate"));
    assert!(checkpoints.iter().all(|c| c["sig"].is_string()));
    for f in &files[1..] {
        let head: Value = serde_json::from_str(
            std::fs::read_to_string(f)
                .expect("read")
                .lines()
                .next()
                .expect("a line"),
        )
        .expect("json");
        assert_eq!(
            head["kind"], "checkpoint",
            "every file opens with a checkpoint"
        );
    }

    let (code, out) = verify(&files, Some(&key_file));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("intact") && out.contains("signed by the key"),
        "{out}"
    );
    assert!(!out.contains("no closing checkpoint"), "{out}");

    // Tampering, each on a fresh copy: the verdict names the first line that shows it.
    // `edit` sees every line of every file in order; a change of count lands in the first.
    let tampered = |name: &str, edit: &dyn Fn(&mut Vec<String>)| {
        let copy = dir.join(format!("tampered-{name}"));
        std::fs::create_dir_all(&copy).expect("dir");
        let per_file: Vec<Vec<String>> = files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .expect("read")
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        let mut counts: Vec<usize> = per_file.iter().map(Vec::len).collect();
        let mut all: Vec<String> = per_file.into_iter().flatten().collect();
        let before = all.len();
        edit(&mut all);
        counts[0] = (counts[0] + all.len()).saturating_sub(before);
        let mut rest = all.into_iter();
        let mut out_files = Vec::new();
        for (f, n) in files.iter().zip(counts) {
            let ls: Vec<String> = rest.by_ref().take(n).collect();
            let p = copy.join(f.file_name().expect("name"));
            std::fs::write(&p, ls.join("\n") + "\n").expect("write");
            out_files.push(p);
        }
        verify(&out_files, Some(&key_file))
    };
    // One byte changed: the year's first digit.
    let (code, out) = tampered("edited", &|ls| {
        ls[3] = ls[3].replacen(r#""time":"2"#, r#""time":"3"#, 1)
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":4: record 3 was edited"), "{out}");
    let (code, out) = tampered("deleted", &|ls| {
        ls.remove(2);
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":3: record 2 was deleted"), "{out}");
    let (code, out) = tampered("reordered", &|ls| ls.swap(2, 3));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(":3: record 3 is out of order (record 2 was expected here)"),
        "{out}"
    );
    let (code, out) = tampered("inserted", &|ls| {
        let copy = ls[2].clone();
        ls.insert(3, copy);
    });
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(":4: a record claiming number 2 was inserted"),
        "{out}"
    );
    // A forger who edits a record and recomputes every hash after it (SHA-256 needs no key)
    // is caught at the next checkpoint, whose signature no longer fits.
    let (code, out) = tampered("rechained", &|ls| {
        ls[3] = ls[3].replacen(r#""time":""#, r#""time":"1"#, 1);
        rechain(ls, 3);
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not signed by the key"), "{out}");
    // A whole file taken out of the middle.
    if files.len() >= 3 {
        let without: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, f)| f.clone())
            .collect();
        let (code, out) = verify(&without, Some(&key_file));
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("were deleted") || out.contains("was deleted"),
            "{out}"
        );
    }
    // The last record, rewritten and re-chained: the closing checkpoint after it catches it
    // (every batch is sealed, so no record is ever past the last signature).
    let (code, out) = tampered("last-record", &|ls| {
        let last = ls
            .iter()
            .rposition(|l| l.contains(r#""kind":"request""#))
            .expect("a record");
        ls[last] = ls[last].replacen(r#""time":""#, r#""time":"1"#, 1);
        rechain(ls, last);
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not signed by the key"), "{out}");
    // Every batch of records is followed by a checkpoint.
    let mut unsealed = 0;
    for l in &all {
        match l["kind"].as_str() {
            Some("checkpoint") => unsealed = 0,
            _ => unsealed += 1,
        }
    }
    assert_eq!(unsealed, 0, "the trail ends sealed");
    // The wrong key: every checkpoint fails.
    let wrong = dir.join("wrong.key");
    std::fs::write(&wrong, "not-the-key-but-as-long-as-a-real-one").expect("write");
    let (code, out) = verify(&files, Some(&wrong));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":1: checkpoint 0 is not signed"), "{out}");
    // A short or empty key is refused outright.
    for short in ["", "short-key"] {
        std::fs::write(&wrong, short).expect("write");
        let (code, out) = verify(&files, Some(&wrong));
        assert_ne!(code, 0, "{out}");
        assert!(out.contains("at least 32"), "{out}");
    }
    // The oldest file deleted: the chain no longer starts at its first checkpoint. Named
    // explicitly with --from, it verifies from there, and the report says so.
    let (code, out) = verify(&files[1..], Some(&key_file));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not at its first"), "{out}");
    let from = out
        .split("--from ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("the report names the checkpoint")
        .to_owned();
    let mut cmd = Command::new(bin_dir().join("switchyard-data-plane"));
    let said = cmd
        .args(["audit", "verify", "--from", &from, "--key-file"])
        .arg(&key_file)
        .args(&files[1..])
        .output()
        .expect("verify");
    let said = String::from_utf8_lossy(&said.stdout).into_owned();
    assert!(
        said.contains("intact") && said.contains(&format!("chain {from}: verified from")),
        "{said}"
    );
    // Cut off at the end: the last batch without its seal is refused; cut after a seal, the
    // trail is intact but has no closing checkpoint, said so.
    // (the trail's last file with a request in it: a rotation right after the last batch
    // leaves a last file holding only the closing checkpoint)
    let read = |f: &std::path::PathBuf| -> Vec<String> {
        std::fs::read_to_string(f)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let at = files
        .iter()
        .rposition(|f| read(f).iter().any(|l| l.contains(r#""kind":"request""#)))
        .expect("a file with a record");
    let ls = read(&files[at]);
    let cut = dir.join("cut.jsonl");
    let mut cut_files = files[..at].to_vec();
    cut_files.push(cut.clone());
    let last_record = ls
        .iter()
        .rposition(|l| l.contains(r#""kind":"request""#))
        .expect("a record in the last file");
    std::fs::write(&cut, ls[..=last_record].join("\n") + "\n").expect("write");
    let (code, out) = verify(&cut_files, Some(&key_file));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not sealed"), "{out}");
    let sealed_at = ls[..last_record]
        .iter()
        .rposition(|l| l.contains(r#""kind":"checkpoint""#))
        .expect("an earlier checkpoint");
    std::fs::write(&cut, ls[..=sealed_at].join("\n") + "\n").expect("write");
    let (code, out) = verify(&cut_files, Some(&key_file));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no closing checkpoint"), "{out}");
}

/// Recomputes `prev` and `hash` of every line from `from` on, as a forger without the key
/// would (signatures are left as they were).
fn rechain(ls: &mut [String], from: usize) {
    let hash_of =
        |body: &str| hex::encode(ring::digest::digest(&ring::digest::SHA256, body.as_bytes()));
    let mut prev: String = serde_json::from_str::<Value>(&ls[from - 1]).expect("json")["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    for l in ls.iter_mut().skip(from) {
        let v: Value = serde_json::from_str(l).expect("json");
        let old_prev = v["prev"].as_str().expect("prev").to_owned();
        let at = l.rfind(r#","hash":""#).expect("hash field");
        let body = l[..at].replacen(
            &format!(r#""prev":"{old_prev}""#),
            &format!(r#""prev":"{prev}""#),
            1,
        );
        let hash = hash_of(&body);
        let sig = v
            .get("sig")
            .and_then(Value::as_str)
            .map(|s| format!(r#","sig":"{s}""#))
            .unwrap_or_default();
        *l = format!(r#"{body},"hash":"{hash}"{sig}}}"#);
        prev = hash;
    }
}

#[tokio::test]
async fn a_redis_outage_never_blocks_requests_and_the_export_verifies() {
    let dir = temp_dir("audit-redis");
    let mut redis = RedisServer::start(&dir);
    let (_mock, mock) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock)).expect("write");
    let key_file = dir.join("audit.key");
    std::fs::write(&key_file, KEY).expect("key");
    let (mut dp, api, admin) = start_standalone(
        &cfg,
        &[
            "--audit-redis-url",
            &redis.url(),
            "--audit-key-file",
            &key_file.display().to_string(),
            "--audit-buffer",
            "4",
        ],
        &dir,
    );
    wait_ready(&admin).await;
    let url = format!("{api}/v1/chat/completions");
    let body = chat_body("mock-gpt", "hello");
    let chat = || post(&url, Some(CLIENT_KEY), &body);
    for _ in 0..3 {
        assert_eq!(chat().await.0, 200);
    }
    eventually(DEADLINE, "records in the stream", || async {
        (metric(&admin, "switchyard_audit_records_total").await >= 3.0).then_some(())
    })
    .await;

    // Redis goes away: requests are served as fast as before; records are held (4), the
    // rest dropped and counted.
    redis.kill();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(chat().await.0, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the audit sink never blocks: {:?}",
        started.elapsed()
    );
    eventually(DEADLINE, "sink errors counted", || async {
        (metric(&admin, "switchyard_audit_sink_errors_total").await >= 1.0).then_some(())
    })
    .await;
    // The writer takes records in 20 ms windows: the count settles at 10 - 4.
    eventually(DEADLINE, "drops counted", || async {
        (metric(&admin, "switchyard_audit_dropped_total").await == 6.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metric(&admin, "switchyard_audit_dropped_total").await, 6.0);

    // Back: the held records and a gap line for the dropped ones.
    redis.restart();
    eventually(DEADLINE, "held records written", || async {
        let n = metric(&admin, "switchyard_audit_records_total").await;
        (n >= 7.0).then_some(())
    })
    .await;
    assert!(dp.terminate(Duration::from_secs(10)));

    let out = dir.join("export");
    let export = Command::new(bin_dir().join("switchyard-data-plane"))
        .args(["audit", "export", "--redis-url", &redis.url(), "--out"])
        .arg(&out)
        .output()
        .expect("export runs");
    let said = String::from_utf8_lossy(&export.stdout);
    assert!(
        export.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert_eq!(
        redis.query::<u64>(&["XLEN", "switchyard:audit"]),
        Some(0),
        "drained"
    );
    let files = audit_files(&out);
    assert_eq!(files.len(), 1, "{said}");
    let all = lines(&files);
    let records = all.iter().filter(|l| l["kind"] == "request").count();
    assert_eq!(records, 7, "3 before, 4 held: {all:#?}");
    let gap = all.iter().find(|l| l["kind"] == "gap").expect("a gap line");
    assert_eq!(gap["dropped"], 6);
    let (code, said) = verify(&files, Some(&key_file));
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("6 record(s) dropped"), "{said}");
}
