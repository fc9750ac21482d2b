//! Guardrail webhooks end to end: a real Microsoft Presidio (spaCy NER and its recognizers)
//! answers the webhook protocol for a standalone data plane in front of the mock upstream.
//! Redaction of the spans it finds in prompts and answers, a block, and what a webhook that
//! is down, slow or talking nonsense does under fail-closed and fail-open.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use switchyard_tests::presidio::Presidio;
use switchyard_tests::procs::{Proc, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(presidio: &str, down: &str, silent: &str, garbage: &str) -> String {
    let slow = presidio.replace("/check", "/slow/check");
    let route = |name: &str| {
        format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: {name}}}\nspec: {{models: [{name}], backends: [{{pool: openai, model: mock-gpt}}]}}\n---\n"
        )
    };
    let guard = |name: &str, phases: &str, webhook: &str| {
        format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: Guardrail\nmetadata: {{name: {name}}}\nspec: {{targets: {{routes: [{name}]}}, phases: [{phases}], webhook: {webhook}}}\n---\n"
        )
    };
    let mut out = String::new();
    for (name, phases, webhook) in [
        ("presidio", "Request", format!("{{url: {presidio}}}")),
        ("presidio-out", "Response", format!("{{url: {presidio}}}")),
        ("down-closed", "Request", format!("{{url: {down}}}")),
        (
            "down-open",
            "Request",
            format!("{{url: {down}, failureMode: Open}}"),
        ),
        (
            "silent",
            "Request",
            format!("{{url: {silent}, timeout: 300ms}}"),
        ),
        ("garbage", "Request", format!("{{url: {garbage}}}")),
        (
            "presidio-slow-closed",
            "Request",
            format!("{{url: {slow}, timeout: 200ms, failureMode: Closed}}"),
        ),
        (
            "presidio-slow-open",
            "Request",
            format!("{{url: {slow}, timeout: 200ms, failureMode: Open}}"),
        ),
    ] {
        out.push_str(&route(name));
        out.push_str(&guard(name, phases, &webhook));
    }
    out
}

/// A webhook that accepts connections and never answers.
async fn silent_webhook() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    format!("http://{addr}/check")
}

/// A webhook that answers 200 with a body that is not the protocol.
async fn garbage_webhook() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 65536];
                let _ = s.read(&mut buf).await;
                let body = r#"{"action":"redact","redactions":[{"index":7,"start":0,"end":1}]}"#;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    format!("http://{addr}/check")
}

struct Env {
    _mock: Proc,
    mock: String,
    _dp: Proc,
    api: String,
    admin: String,
    presidio: Presidio,
}

async fn env() -> Env {
    let dir = temp_dir("guardrail-webhook");
    let presidio = Presidio::start(&dir, &["US_SSN"]);
    let (mock_proc, mock) = start_mock(&dir);
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("base.yaml"), base_config(&mock)).expect("write");
    let down = format!("http://127.0.0.1:{}/check", free_port());
    std::fs::write(
        cfg.join("webhooks.yaml"),
        config(
            &presidio.url(),
            &down,
            &silent_webhook().await,
            &garbage_webhook().await,
        ),
    )
    .expect("write");
    let (dp, api, admin) = start_standalone(&cfg, &[], &dir);
    wait_up(&format!("{mock}/_mock/requests")).await;
    wait_ready(&admin).await;
    Env {
        _mock: mock_proc,
        mock,
        _dp: dp,
        api,
        admin,
        presidio,
    }
}

impl Env {
    async fn chat(&self, model: &str, prompt: &str) -> (u16, String, Value) {
        let (s, h, b) = post(
            &format!("{}/v1/chat/completions", self.api),
            Some(CLIENT_KEY),
            &chat_body(model, prompt),
        )
        .await;
        let fired = h
            .get("x-switchyard-guardrails")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (s, fired, b)
    }

    async fn upstream_saw(&self) -> String {
        let reqs = mock_requests(&self.mock).await;
        reqs.last().cloned().unwrap_or_default()["body"]["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn failures(&self, reason: &str) -> f64 {
        let text = client()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.starts_with("switchyard_guardrail_webhook_failures_total{")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

#[tokio::test]
async fn presidio_redacts_prompts_and_answers_and_blocks() {
    let e = env().await;
    // The request phase: Presidio's spans (a name found by NER, an email, a phone number)
    // are replaced before the prompt leaves; the rest is the client's text.
    let prompt = "My name is John Smith, write to john.smith@example.com or call 212-555-0199.";
    let (s, fired, b) = e.chat("presidio", prompt).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(fired, "default/presidio=redact");
    assert_eq!(
        e.upstream_saw().await,
        "My name is [PERSON], write to [EMAIL_ADDRESS] or call [PHONE_NUMBER].",
        "{}",
        e.presidio.logs()
    );
    // Nothing found: the prompt goes out unchanged, no header.
    let (s, fired, _) = e.chat("presidio", "What is the capital of France?").await;
    assert_eq!((s, fired.as_str()), (200, ""));
    assert_eq!(e.upstream_saw().await, "What is the capital of France?");

    // Block: Presidio's US_SSN finding refuses the request, naming the detector and never
    // the number; nothing goes upstream.
    let before = mock_requests(&e.mock).await.len();
    let (s, _, b) = e.chat("presidio", "my ssn is 536-90-4399").await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "guardrail_blocked");
    let msg = b["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("default/presidio") && msg.contains("webhook:us_ssn"),
        "{msg}"
    );
    assert!(!msg.contains("536"), "{msg}");
    assert_eq!(mock_requests(&e.mock).await.len(), before);

    // The response phase: the mock echoes the prompt; the answer is redacted, the prompt
    // was not (this guardrail checks answers only).
    let echo = "mock.echo=1 Contact Maria Garcia at maria.garcia@example.org";
    let (s, fired, b) = e.chat("presidio-out", echo).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(fired, "default/presidio-out=redact");
    assert_eq!(
        b["choices"][0]["message"]["content"], "Contact [PERSON] at [EMAIL_ADDRESS]",
        "{b}"
    );
    assert_eq!(
        b["object"], "chat.completion",
        "metadata is not sent for checking"
    );
    assert_eq!(e.upstream_saw().await, echo);
    // A stream cannot be checked by a webhook without holding the whole answer: refused
    // before anything goes upstream, with a clear error.
    let before = mock_requests(&e.mock).await.len();
    let resp = client()
        .post(format!("{}/v1/chat/completions", e.api))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "presidio-out", "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 400);
    let b: Value = resp.json().await.expect("json");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("without `stream`")),
        "{b}"
    );
    assert_eq!(mock_requests(&e.mock).await.len(), before);
}

#[tokio::test]
async fn a_failing_webhook_fails_closed_or_open_as_configured() {
    let e = env().await;
    let before = mock_requests(&e.mock).await.len();
    // Down, fail-closed (the default): 503 guardrail_unavailable in the caller's dialect.
    let (s, _, b) = e.chat("down-closed", "hello").await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "guardrail_unavailable", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("default/down-closed") && m.contains("unreachable")),
        "{b}"
    );
    let resp = client()
        .post(format!("{}/v1/messages", e.api))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "down-closed", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .expect("messages");
    assert!(matches!(resp.status().as_u16(), 503 | 529));
    let b: Value = resp.json().await.expect("json");
    assert_eq!(b["type"], "error", "{b}");
    assert_eq!(b["error"]["type"], "overloaded_error", "{b}");
    // Silent: the timeout holds (300ms), then fail-closed.
    let t = Instant::now();
    let (s, _, b) = e.chat("silent", "hello").await;
    assert_eq!(s, 503, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not answer within 300ms")),
        "{b}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Nonsense (a span outside the text): not applied, refused.
    let (s, _, b) = e.chat("garbage", "hello").await;
    assert_eq!(s, 503, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not the protocol")),
        "{b}"
    );
    assert_eq!(
        mock_requests(&e.mock).await.len(),
        before,
        "nothing unchecked went upstream"
    );
    // Down, fail-open: the request goes through unchecked.
    let (s, fired, b) = e.chat("down-open", "hello open").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(fired, "");
    assert_eq!(e.upstream_saw().await, "hello open");
    // Presidio answering slower than the guardrail's timeout (200ms), in both fail modes:
    // closed refuses, open lets the prompt through unchecked (the email is not redacted).
    let t = Instant::now();
    let (s, _, b) = e
        .chat("presidio-slow-closed", "write to jane@example.com")
        .await;
    assert_eq!(s, 503, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("default/presidio-slow-closed")
                && m.contains("did not answer within 200ms")),
        "{b}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let (s, fired, b) = e
        .chat("presidio-slow-open", "write to jane@example.com")
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(fired, "");
    assert_eq!(e.upstream_saw().await, "write to jane@example.com");
    // Every failure counted by reason.
    assert_eq!(e.failures("connect").await, 3.0);
    assert_eq!(e.failures("timeout").await, 3.0);
    assert_eq!(e.failures("invalid").await, 1.0);
}
