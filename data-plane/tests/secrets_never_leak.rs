//! Property test: a planted secret never reaches the upstream or the client through a route
//! whose guardrail redacts or blocks it, whatever shape the request or the answer takes.
//!
//! Each case builds a request the front doors accept — both front doors (OpenAI chat,
//! Anthropic messages), every content-part type, tools, tool calls and results, documents,
//! unknown fields, numbers beyond `f64`, nesting hundreds deep — plants one secret (a card,
//! an email, an API key, an 854-character JWT, an IBAN, an SSN) in one of its texts, written
//! plainly or as a lookalike (fullwidth digits, zero-width or dotted separators, `\u`
//! escapes), and sends it through the whole gateway (front door, guardrails, passthrough or
//! translation) to an upstream in this process that records what it receives and answers
//! with the same kind of secret planted in its text, its thinking or a tool call's
//! arguments, whole or streamed in pieces cut at random (up to 4 KB). The property: nothing
//! the upstream received and nothing the client received contains the secret, read with
//! every escape undone and every lookalike folded (see [`squash`]).
//!
//! Cases: `PROPTEST_CASES` (CI runs the default below; the closing note of the change that
//! added it records a run of 100,000).

use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_data_plane::gateway::Gateway;
use switchyard_data_plane::stack;
use tower::ServiceExt;
use unicode_normalization::UnicodeNormalization;

const KEY: &str = "sk-test-secrets-never-leak";

/// What the upstream answers next, and what it last received.
#[derive(Default)]
struct Upstream {
    answer: Option<Answer>,
    received: Vec<String>,
}

/// A scripted answer: the body or the stream's chunks.
#[derive(Clone, Debug)]
struct Answer {
    stream: bool,
    chunks: Vec<Bytes>,
}

struct Env {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    upstream: Arc<Mutex<Upstream>>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let upstream = Arc::new(Mutex::new(Upstream::default()));
        let router = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let state = upstream.clone();
            let app = axum::Router::new().fallback(move |body: Bytes| {
                let state = state.clone();
                async move {
                    let answer = {
                        let mut s = state.lock().expect("lock");
                        s.received.push(String::from_utf8_lossy(&body).into_owned());
                        s.answer.clone()
                    };
                    let Some(a) = answer else {
                        return http::Response::builder()
                            .status(500)
                            .body(Body::from("no answer scripted"))
                            .expect("response");
                    };
                    let ct = if a.stream {
                        "text/event-stream"
                    } else {
                        "application/json"
                    };
                    let chunks = futures_util::stream::iter(
                        a.chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
                    );
                    http::Response::builder()
                        .header("content-type", ct)
                        .body(Body::from_stream(chunks))
                        .expect("response")
                }
            });
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            let gw = Gateway::new(16 << 20);
            let mut world = switchyard_crds::World::default();
            world.add_yaml("test", &config(port));
            let compiled = switchyard_crds::compile(&world);
            assert!(
                compiled.diagnostics.is_empty(),
                "{:?}",
                compiled.diagnostics
            );
            let rejected = gw.apply(&compiled.snapshot);
            assert!(rejected.is_empty(), "{rejected:?}");
            stack::router(gw)
        });
        Env {
            rt,
            router,
            upstream,
        }
    })
}

fn config(port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData: {{key: {KEY}, upstream: sk-upstream-credential}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: client}}
spec: {{secretRef: {{name: keys}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: openai}}
spec:
  provider: openai
  endpoints: [{{url: "http://127.0.0.1:{port}/v1", credentialSecretRef: {{name: keys, key: upstream}}}}]
  models: [{{name: up-gpt}}]
  outlierDetection: {{consecutiveFailures: 0, consecutiveRateLimits: 0}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: anthropic}}
spec:
  provider: anthropic
  endpoints: [{{url: "http://127.0.0.1:{port}", credentialSecretRef: {{name: keys, key: upstream}}}}]
  models: [{{name: up-claude}}]
  outlierDetection: {{consecutiveFailures: 0, consecutiveRateLimits: 0}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: redact-openai, labels: {{action: redact}}}}
spec: {{models: [redact-openai], backends: [{{pool: openai, model: up-gpt}}], retries: {{attempts: 1}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: redact-anthropic, labels: {{action: redact}}}}
spec: {{models: [redact-anthropic], backends: [{{pool: anthropic, model: up-claude}}], retries: {{attempts: 1}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: block-openai, labels: {{action: block}}}}
spec: {{models: [block-openai], backends: [{{pool: openai, model: up-gpt}}], retries: {{attempts: 1}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: block-anthropic, labels: {{action: block}}}}
spec: {{models: [block-anthropic], backends: [{{pool: anthropic, model: up-claude}}], retries: {{attempts: 1}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {{name: redact}}
spec:
  targets: {{routeSelector: {{matchLabels: {{action: redact}}}}}}
  phases: [Request, Response]
  pii: {{entities: [Email, CreditCard, Iban, Ssn, Secret], action: Redact}}
---
apiVersion: switchyard.dev/v1alpha1
kind: Guardrail
metadata: {{name: block}}
spec:
  targets: {{routeSelector: {{matchLabels: {{action: block}}}}}}
  phases: [Request, Response]
  pii: {{entities: [Email, CreditCard, Iban, Ssn, Secret], action: Block}}
"#
    )
}

/// The kinds of secret planted, each with its distinctive letters and digits.
#[derive(Clone, Copy, Debug)]
enum Secret {
    Card,
    Email,
    OpenAiKey,
    AwsKey,
    Jwt,
    Iban,
    Ssn,
}

/// How a secret is written.
#[derive(Clone, Copy, Debug)]
enum Form {
    Plain,
    Fullwidth,
    ZeroWidth,
    Dotted,
    /// Some characters as `\u` escapes in the JSON that carries it.
    Escaped,
}

/// Where in a request the secret goes.
#[derive(Clone, Copy, Debug)]
enum Slot {
    UserString,
    TextPart,
    System,
    ToolDescription,
    ToolSchema,
    /// An assistant's earlier tool call: its arguments (OpenAI) or input (Anthropic), under
    /// a name such as `data`, `url`, `id`, `name` or `type`.
    ToolInput,
    ToolResult,
    /// An Anthropic plain-text document (OpenAI: a second text part).
    Document,
    /// An unknown top-level field.
    Extra,
}

/// Where in an answer the secret goes.
#[derive(Clone, Copy, Debug)]
enum AnswerSlot {
    Text,
    ToolArgs,
    Thinking,
}

#[derive(Clone, Debug)]
struct Case {
    chat_door: bool,
    anthropic_upstream: bool,
    block: bool,
    secret: Secret,
    form: Form,
    slot: Slot,
    answer_slot: AnswerSlot,
    stream: bool,
    /// Extra nesting in an unknown field.
    depth: usize,
    big_number: bool,
    /// Randomness for the secret's value, its escapes and the stream's cuts.
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let secret = prop_oneof![
        Just(Secret::Card),
        Just(Secret::Email),
        Just(Secret::OpenAiKey),
        Just(Secret::AwsKey),
        Just(Secret::Jwt),
        Just(Secret::Iban),
        Just(Secret::Ssn),
    ];
    let form = prop_oneof![
        Just(Form::Plain),
        Just(Form::Fullwidth),
        Just(Form::ZeroWidth),
        Just(Form::Dotted),
        Just(Form::Escaped),
    ];
    let slot = prop_oneof![
        Just(Slot::UserString),
        Just(Slot::TextPart),
        Just(Slot::System),
        Just(Slot::ToolDescription),
        Just(Slot::ToolSchema),
        Just(Slot::ToolInput),
        Just(Slot::ToolResult),
        Just(Slot::Document),
        Just(Slot::Extra),
    ];
    let answer_slot = prop_oneof![
        Just(AnswerSlot::Text),
        Just(AnswerSlot::ToolArgs),
        Just(AnswerSlot::Thinking),
    ];
    (
        (any::<bool>(), any::<bool>(), any::<bool>(), secret, form),
        (slot, answer_slot, any::<bool>()),
        (
            prop_oneof![Just(0usize), 1usize..300],
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (chat_door, anthropic_upstream, block, secret, form),
                (slot, answer_slot, stream),
                (depth, big_number, seed),
            )| Case {
                chat_door,
                anthropic_upstream,
                block,
                secret,
                form,
                slot,
                answer_slot,
                stream,
                depth,
                big_number,
                seed,
            },
        )
}

/// A random instance of a secret, as plain text.
fn secret_value(s: Secret, rng: &mut fastrand::Rng) -> String {
    let alnum = |rng: &mut fastrand::Rng, n: usize| -> String {
        (0..n).map(|_| rng.alphanumeric()).collect()
    };
    match s {
        Secret::Card => [
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "4012888888881881",
        ][rng.usize(..3)]
        .to_owned(),
        Secret::Email => format!("{}.doe@example.com", alnum(rng, 6).to_lowercase()),
        Secret::OpenAiKey => format!("sk-proj-{}", alnum(rng, 32)),
        Secret::AwsKey => format!(
            "AKIA{}",
            (0..16)
                .map(|_| char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[rng.usize(..32)]))
                .collect::<String>()
        ),
        Secret::Jwt => format!(
            "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJ{}.{}",
            alnum(rng, 700),
            alnum(rng, 100)
        ),
        Secret::Iban => "GB82 WEST 1234 5698 7654 32".to_owned(),
        Secret::Ssn => "123-45-6789".to_owned(),
    }
}

/// The secret written in a form (before JSON escapes, which [`escape`] adds).
fn written(value: &str, form: Form, rng: &mut fastrand::Rng) -> String {
    match form {
        Form::Plain | Form::Escaped => value.to_owned(),
        Form::Fullwidth => value
            .chars()
            .map(|c| match c {
                '0'..='9' | 'A'..='Z' | 'a'..='z' if rng.bool() => {
                    char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap_or(c)
                }
                c => c,
            })
            .collect(),
        Form::ZeroWidth => value
            .chars()
            .flat_map(|c| {
                let zw = ['\u{200B}', '\u{2060}', '\u{FEFF}', '\u{00AD}'][rng.usize(..4)];
                [Some(c), rng.bool().then_some(zw)]
            })
            .flatten()
            .collect(),
        // Numbers (cards, IBANs) with their separators written as dots; a key's own dashes
        // are part of it (`sk.proj.` is not an OpenAI key).
        Form::Dotted
            if value.bytes().filter(u8::is_ascii_digit).count() >= 13
                && value.bytes().all(|b| {
                    b.is_ascii_digit() || b.is_ascii_uppercase() || b == b' ' || b == b'-'
                }) =>
        {
            value
                .chars()
                .map(|c| if c == ' ' || c == '-' { '.' } else { c })
                .collect()
        }
        Form::Dotted => value.to_owned(),
    }
}

/// Replaces the secret's first occurrence in a JSON text by the same characters with some
/// of them written as `\u` escapes (the JSON means the same).
fn escape(json: &str, secret_json: &str, rng: &mut fastrand::Rng) -> String {
    let Some(at) = json.find(secret_json) else {
        return json.to_owned();
    };
    let mut out = String::with_capacity(json.len() + 64);
    out.push_str(&json[..at]);
    for c in secret_json.chars() {
        if c.is_ascii_alphanumeric() && rng.u8(..3) == 0 {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push_str(&json[at + secret_json.len()..]);
    out
}

/// Undoes every escape at any depth and folds every lookalike, then keeps only ASCII
/// letters and digits: a secret's letters and digits appear here in order if any reader
/// could read it out of the text.
fn squash(s: &str) -> String {
    let mut t = s.to_owned();
    loop {
        let n = t.replace("\\\\", "\\");
        if n == t {
            break;
        }
        t = n;
    }
    let mut decoded = String::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if t[i..].starts_with("\\u")
            && let Some(h) = t.get(i + 2..i + 6)
            && let Ok(u) = u32::from_str_radix(h, 16)
        {
            if (0xD800..0xDC00).contains(&u)
                && t.get(i + 6..i + 8) == Some("\\u")
                && let Some(l) = t
                    .get(i + 8..i + 12)
                    .and_then(|l| u32::from_str_radix(l, 16).ok())
            {
                if let Some(c) = char::from_u32(0x10000 + ((u - 0xD800) << 10) + (l - 0xDC00)) {
                    decoded.push(c);
                }
                i += 12;
                continue;
            }
            if let Some(c) = char::from_u32(u) {
                decoded.push(c);
            }
            i += 6;
            continue;
        }
        let c = t[i..].chars().next().unwrap_or('\0');
        decoded.push(c);
        i += c.len_utf8().max(1);
    }
    decoded
        .chars()
        .flat_map(|c| {
            let u = c as u32;
            if (0xE0020..=0xE007E).contains(&u) {
                char::from_u32(u - 0xE0000).into_iter().collect::<Vec<_>>()
            } else {
                std::iter::once(c).nfkc().collect()
            }
        })
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// A request of the case's front door with the secret in its slot.
fn request(c: &Case, model: &str, planted: &str) -> Value {
    let p = planted;
    let mut extra = json!("x");
    for _ in 0..c.depth {
        extra = json!([extra]);
    }
    let input = |rng_key: &str| json!({"query": "q", rng_key: p, "nested": {"data": p}});
    let mut body = if c.chat_door {
        let mut messages = vec![json!({"role": "system", "content": "be brief"})];
        if let Slot::System = c.slot {
            messages[0] = json!({"role": "system", "content": format!("be brief {p}")});
        }
        if let Slot::ToolInput | Slot::ToolResult = c.slot {
            let args = if let Slot::ToolInput = c.slot {
                input(["data", "url", "id", "name", "type"][c.seed as usize % 5]).to_string()
            } else {
                json!({"query": "q"}).to_string()
            };
            messages.push(json!({"role": "user", "content": "look it up"}));
            messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": args}}]}));
            let result = if let Slot::ToolResult = c.slot {
                format!("found {p}")
            } else {
                "nothing".to_owned()
            };
            messages.push(json!({"role": "tool", "tool_call_id": "call_1", "content": result}));
        }
        let user = match c.slot {
            Slot::UserString => json!({"role": "user", "content": format!("please {p} thanks")}),
            Slot::TextPart | Slot::Document => json!({"role": "user", "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}},
                {"type": "text", "text": format!("and {p}")}]}),
            _ => json!({"role": "user", "content": "hello"}),
        };
        messages.push(user);
        json!({"model": model, "messages": messages, "max_tokens": 50, "stream": c.stream})
    } else {
        let mut messages = Vec::new();
        if let Slot::ToolInput | Slot::ToolResult = c.slot {
            let tool_input = if let Slot::ToolInput = c.slot {
                input(["data", "url", "id", "name", "type"][c.seed as usize % 5])
            } else {
                json!({"query": "q"})
            };
            messages.push(json!({"role": "user", "content": "look it up"}));
            messages.push(json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": tool_input}]}));
            let result = if let Slot::ToolResult = c.slot {
                json!([{"type": "text", "text": format!("found {p}")}])
            } else {
                json!("nothing")
            };
            messages.push(json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": result}]}));
        }
        let user = match c.slot {
            Slot::UserString => json!({"role": "user", "content": format!("please {p} thanks")}),
            Slot::TextPart => json!({"role": "user", "content": [
                {"type": "text", "text": "see"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}},
                {"type": "text", "text": format!("and {p}")}]}),
            Slot::Document => json!({"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": format!("notes: {p}")}},
                {"type": "text", "text": "summarise"}]}),
            _ => json!({"role": "user", "content": "hello"}),
        };
        messages.push(user);
        let system = if let Slot::System = c.slot {
            json!([{"type": "text", "text": format!("be brief {p}")}])
        } else {
            json!("be brief")
        };
        json!({"model": model, "max_tokens": 50, "system": system, "messages": messages, "stream": c.stream})
    };
    let (description, schema_description) = match c.slot {
        Slot::ToolDescription => (format!("looks up {p}"), "what to find".to_owned()),
        Slot::ToolSchema => ("looks things up".to_owned(), format!("e.g. {p}")),
        _ => ("looks things up".to_owned(), "what to find".to_owned()),
    };
    let schema = json!({"type": "object", "properties": {"query": {"type": "string", "description": schema_description}}});
    let tools = if c.chat_door {
        json!([{"type": "function", "function": {"name": "lookup", "description": description, "parameters": schema}}])
    } else {
        json!([{"name": "lookup", "description": description, "input_schema": schema}])
    };
    if let Some(o) = body.as_object_mut() {
        o.insert("tools".into(), tools);
        if let Slot::Extra = c.slot {
            o.insert("x_note".into(), json!({"text": p}));
        }
        if c.depth > 0 {
            o.insert("x_deep".into(), extra);
        }
    }
    body
}

/// The upstream's answer with the secret planted, in its format, cut into chunks.
fn answer(c: &Case, planted: &str, rng: &mut fastrand::Rng) -> Answer {
    let text = match c.answer_slot {
        AnswerSlot::Text => format!("Here it is: {planted}. Anything else?"),
        _ => "Here it is.".to_owned(),
    };
    let thinking = match c.answer_slot {
        AnswerSlot::Thinking => format!("the user wants {planted}"),
        _ => "thinking".to_owned(),
    };
    let args = json!({"query": match c.answer_slot {
        AnswerSlot::ToolArgs => planted.to_owned(),
        _ => "q".to_owned(),
    }})
    .to_string();
    let tool = !matches!(c.answer_slot, AnswerSlot::Text);
    // Pieces of a text, cut at random (a character never split).
    let mut cut = |s: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < s.len() {
            let mut end = (at + rng.usize(1..=24)).min(s.len());
            while !s.is_char_boundary(end) {
                end += 1;
            }
            out.push(s[at..end].to_owned());
            at = end;
        }
        out
    };
    let body: String = if c.anthropic_upstream {
        if !c.stream {
            let mut content = vec![];
            if let AnswerSlot::Thinking = c.answer_slot {
                content.push(
                    json!({"type": "thinking", "thinking": thinking, "signature": "c2lnbmF0dXJl"}),
                );
            }
            content.push(json!({"type": "text", "text": text}));
            if tool {
                content.push(
                    json!({"type": "tool_use", "id": "toolu_9", "name": "lookup",
                    "input": serde_json::from_str::<Value>(&args).unwrap_or(Value::Null)}),
                );
            }
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "up-claude",
                "content": content, "stop_reason": if tool {"tool_use"} else {"end_turn"},
                "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 20}})
            .to_string()
        } else {
            let mut ev = String::new();
            let mut push = |name: &str, data: Value| {
                ev.push_str(&format!("event: {name}\ndata: {data}\n\n"));
            };
            push(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": "up-claude", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
            );
            let mut index = 0;
            if let AnswerSlot::Thinking = c.answer_slot {
                push(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "thinking", "thinking": ""}}),
                );
                for piece in cut(&thinking) {
                    push(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "thinking_delta", "thinking": piece}}),
                    );
                }
                push(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}}),
                );
                push(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                );
                index += 1;
            }
            push(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}}),
            );
            for piece in cut(&text) {
                push(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": piece}}),
                );
            }
            push(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            );
            if tool {
                index += 1;
                push(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {}}}),
                );
                for piece in cut(&args) {
                    push(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}),
                    );
                }
                push(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                );
            }
            push(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": if tool {"tool_use"} else {"end_turn"},
                "stop_sequence": null}, "usage": {"output_tokens": 20}}),
            );
            push("message_stop", json!({"type": "message_stop"}));
            ev
        }
    } else if !c.stream {
        let mut message = json!({"role": "assistant", "content": text});
        if let AnswerSlot::Thinking = c.answer_slot {
            message["reasoning_content"] = json!(thinking);
        }
        if tool {
            message["tool_calls"] = json!([{"id": "call_9", "type": "function",
                "function": {"name": "lookup", "arguments": args}}]);
        }
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-gpt",
            "choices": [{"index": 0, "message": message, "finish_reason": if tool {"tool_calls"} else {"stop"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}})
        .to_string()
    } else {
        let mut ev = String::new();
        let mut push = |delta: Value, finish: Value| {
            let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "up-gpt", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            ev.push_str(&format!("data: {chunk}\n\n"));
        };
        push(json!({"role": "assistant", "content": ""}), Value::Null);
        if let AnswerSlot::Thinking = c.answer_slot {
            for piece in cut(&thinking) {
                push(json!({"reasoning_content": piece}), Value::Null);
            }
        }
        for piece in cut(&text) {
            push(json!({"content": piece}), Value::Null);
        }
        if tool {
            push(
                json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                "function": {"name": "lookup", "arguments": ""}}]}),
                Value::Null,
            );
            for piece in cut(&args) {
                push(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                );
            }
        }
        push(json!({}), json!(if tool { "tool_calls" } else { "stop" }));
        ev.push_str(&format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "created": 1, "model": "up-gpt", "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}})
        ));
        ev.push_str("data: [DONE]\n\n");
        ev
    };
    // The wire, cut into chunks of up to 4 KB at random bytes.
    let bytes = body.into_bytes();
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + rng.usize(1..=4096)).min(bytes.len());
        chunks.push(Bytes::copy_from_slice(&bytes[at..end]));
        at = end;
    }
    Answer {
        stream: c.stream,
        chunks,
    }
}

/// Runs one case: what the upstream received and what the client got.
fn run(c: &Case) -> Result<(), TestCaseError> {
    let env = env();
    let mut rng = fastrand::Rng::with_seed(c.seed);
    let value = secret_value(c.secret, &mut rng);
    let squashed = squash(&value);
    let planted = written(&value, c.form, &mut rng);
    let model = match (c.block, c.anthropic_upstream) {
        (false, false) => "redact-openai",
        (false, true) => "redact-anthropic",
        (true, false) => "block-openai",
        (true, true) => "block-anthropic",
    };
    let mut json = request(c, model, &planted).to_string();
    if let Form::Escaped = c.form {
        let quoted = serde_json::to_string(&planted).unwrap_or_default();
        json = escape(&json, &quoted[1..quoted.len() - 1], &mut rng);
    }
    if c.big_number {
        // A number no f64 holds, as an unknown field's value.
        json = format!("{{\"x_big\":1e400,{}", &json[1..]);
    }
    let answer_secret = written(&secret_value(c.secret, &mut rng), c.form, &mut rng);
    let answer_squashed = squash(&answer_secret);
    {
        let mut u = env.upstream.lock().expect("lock");
        u.received.clear();
        u.answer = Some(answer(c, &answer_secret, &mut rng));
    }
    let path = if c.chat_door {
        "/v1/chat/completions"
    } else {
        "/v1/messages"
    };
    let req = http::Request::post(path)
        .header("authorization", format!("Bearer {KEY}"))
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Body::from(json.clone()))
        .expect("request");
    let (status, client) = env.rt.block_on(async {
        let resp = env.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    let received = env.upstream.lock().expect("lock").received.clone();
    for r in &received {
        prop_assert!(
            !squash(r).contains(&squashed),
            "the upstream received the secret (status {status}): {r}\nrequest: {json}"
        );
    }
    prop_assert!(
        !squash(&client).contains(&squashed) && !squash(&client).contains(&answer_squashed),
        "the client received the secret (status {status}): {client}\nrequest: {json}"
    );
    // Nothing went wrong that hides a pass: no internal or upstream error, and a redacting
    // route that passes the client's bytes through answers (a translation may refuse a
    // field it has no counterpart for, or a number beyond f64, with a 400).
    prop_assert!(
        !status.is_server_error(),
        "status {status}: {client}\nrequest: {json}"
    );
    let passthrough = c.chat_door != c.anthropic_upstream;
    if !c.block && passthrough {
        prop_assert!(
            status.is_success(),
            "status {status}: {client}\nrequest: {json}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_planted_secret_never_reaches_the_upstream_or_the_client(c in case()) {
        run(&c)?;
    }
}

#[test]
fn the_oracle_sees_through_escapes_and_lookalikes() {
    let card = squash("4111 1111 1111 1111");
    assert_eq!(card, "4111111111111111");
    for disguised in [
        r#"{"a":"4111\u00201111\u0020\u0031111 1111"}"#,
        r#"{"a":"{\"b\":\"4111\\u00201111 1111 1111\"}"}"#,
        "４１１１.１１１１\u{200B}1111-1111",
    ] {
        assert!(squash(disguised).contains(&card), "{disguised}");
    }
    assert!(!squash("[CREDIT_CARD] ************1111").contains(&card));
}
