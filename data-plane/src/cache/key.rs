//! Which requests a route caches, and the key of one.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Policy, Scope, Text};
use crate::config::KeyEntry;
use crate::llm::{Incoming, Op};

/// Top-level fields that do not change the answer: left out of the key, so a streamed and a
/// whole request share one entry, and so do two users' requests within a scope.
const IGNORED: &[&str] = &[
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
];

/// What the cache does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Not cacheable (the reason is for logs).
    Bypass(&'static str),
    /// Look up and/or fill under these keys.
    Use(Key),
}

/// Where a request's answer is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// The scope's prefix: every key of the scope starts with it, and its `{...}` hash tag
    /// keeps a scope's keys in one Redis Cluster slot.
    pub scope: String,
    /// The exact key: `<scope>e:<hex>` over the whole normalised request.
    pub exact: String,
    /// Semantic mode, when the request has the text to compare.
    pub probe: Option<Probe>,
}

impl Key {
    /// The hex digest at the end of the exact key (a vector's name in its set).
    pub fn digest(&self) -> &str {
        &self.exact[self.scope.len() + 2..]
    }
}

/// What the semantic cache compares: the text to embed, and the set of requests it is
/// compared within — those equal to this one in everything but that text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// `<scope>v:<hex>`: the vector set of the requests that differ only in the text.
    pub set: String,
    pub text: String,
}

/// `sy:cache:{<route>|<scope>}:` — every key of a route (and scope) starts with it (without a
/// scope: every scope of the route).
pub fn prefix(route: &str, scope: Option<&str>) -> String {
    match scope {
        Some(s) => format!("sy:cache:{{{route}|{s}}}:"),
        None => format!("sy:cache:{{{route}|"),
    }
}

/// `s` with Redis glob characters escaped.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The scope of a request under a policy; `None`: the key has no value for the label.
pub fn scope_of(policy: &Policy, key: &KeyEntry) -> Option<String> {
    match &policy.scope {
        Scope::Key => Some(format!("key={}", key.id)),
        Scope::Route => Some("route".to_owned()),
        Scope::Label(l) => key.labels.get(l).map(|v| format!("{l}={v}")),
    }
}

/// Fields that hold the conversation: the semantic cache takes its text from them.
const CONVERSATION: &[&str] = &["messages", "system", "prompt", "input", "instructions"];

/// Whether and under which keys a request is cached.
pub fn plan(policy: &Policy, route: &str, key: &KeyEntry, incoming: &Incoming) -> Plan {
    if incoming.op != Op::Generate {
        return Plan::Bypass("not a completion");
    }
    if incoming.facts.stream && !policy.streaming {
        return Plan::Bypass("streamed requests are not cached on this route");
    }
    let Some(raw) = incoming.raw() else {
        return Plan::Bypass("no body");
    };
    if let Some(max) = policy.max_temperature {
        let t = raw
            .parse_field::<f64>("temperature")
            .ok()
            .flatten()
            .unwrap_or(1.0);
        if t > max {
            return Plan::Bypass("temperature above the route's cache limit");
        }
    }
    let Some(scope) = scope_of(policy, key) else {
        return Plan::Bypass("the key has no value for the cache's scope label");
    };
    let mut names: Vec<&str> = raw.keys().filter(|k| !IGNORED.contains(k)).collect();
    names.sort_unstable();
    let mut exact = Sha256::new();
    exact.update(incoming.format.label().as_bytes());
    exact.update([0]);
    // Semantic mode: the same, but for the compared text.
    let mut rest = policy.semantic.as_ref().map(|s| {
        let mut h = exact.clone();
        h.update(s.source.as_bytes());
        h.update([0]);
        (h, s.text, String::new())
    });
    for name in names {
        let Some(bytes) = raw.get(name) else { continue };
        let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
            return Plan::Bypass("a field is not JSON");
        };
        field(&mut exact, name, &v);
        if let Some((h, text, out)) = &mut rest {
            if CONVERSATION.contains(&name) {
                let kept = match text {
                    Text::LastUserMessage => last_user_message(name, v, out),
                    Text::Conversation => {
                        conversation(v, out);
                        None
                    }
                };
                if let Some(v) = kept {
                    field(h, name, &v);
                }
            } else {
                field(h, name, &v);
            }
        }
    }
    let scope = prefix(route, Some(&scope));
    let probe = rest
        .filter(|(_, _, text)| !text.trim().is_empty())
        .map(|(h, _, text)| Probe {
            set: format!("{scope}v:{}", hex::encode(h.finalize())),
            text,
        });
    Plan::Use(Key {
        exact: format!("{scope}e:{}", hex::encode(exact.finalize())),
        scope,
        probe,
    })
}

/// Feeds one top-level field.
fn field(h: &mut Sha256, name: &str, v: &Value) {
    h.update(name.as_bytes());
    h.update([0]);
    canonical(v, h);
    h.update([0]);
}

/// `LastUserMessage`: takes the last user message's text out of a conversation field (a
/// messages or input array, or a prompt or input string) into `out`, and returns what is
/// left, to match exactly.
fn last_user_message(name: &str, mut v: Value, out: &mut String) -> Option<Value> {
    match &mut v {
        Value::String(s) if name == "prompt" || name == "input" => {
            *out = std::mem::take(s);
            None
        }
        Value::Array(items) if name == "messages" || name == "input" => {
            let last = items
                .iter_mut()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .and_then(|m| m.get_mut("content"));
            if let Some(content) = last {
                out.clear();
                collect(content, out);
                *content = Value::Null;
            }
            Some(v)
        }
        _ => Some(v),
    }
}

/// `Conversation`: every text of a conversation field into `out`, one line each, messages
/// with their role.
fn conversation(v: Value, out: &mut String) {
    let mut push = |role: Option<&str>, v: &Value| {
        if !out.is_empty() {
            out.push('\n');
        }
        if let Some(r) = role {
            out.push_str(r);
            out.push_str(": ");
        }
        collect(v, out);
    };
    match &v {
        Value::Array(items) => {
            for m in items {
                let role = m.get("role").and_then(Value::as_str);
                match m.get("content") {
                    Some(c) => push(role, c),
                    None => push(role, m),
                }
            }
        }
        other => push(None, other),
    }
}

/// The text of a message's content: a string, or its text parts in order.
fn collect(v: &Value, out: &mut String) {
    let mut v = v.clone();
    let mut first = true;
    let _ = crate::policy::guard::enforce::walk(&mut v, &mut |t: &mut String| {
        if !first {
            out.push(' ');
        }
        first = false;
        out.push_str(t);
        Ok(())
    });
}

/// Feeds a JSON value with its object keys sorted (numbers and strings as serde_json writes
/// them).
fn canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            h.update(b"{");
            for (k, v) in entries {
                h.update(serde_json::to_string(k).unwrap_or_default().as_bytes());
                h.update(b":");
                canonical(v, h);
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(items) => {
            h.update(b"[");
            for i in items {
                canonical(i, h);
                h.update(b",");
            }
            h.update(b"]");
        }
        other => h.update(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Body, Facts, Format, raw::RawObject};

    fn incoming(body: &str, stream: bool) -> Incoming {
        Incoming {
            format: Format::OpenAiChat,
            op: Op::Generate,
            facts: Facts {
                model: "m".into(),
                stream,
                ..Facts::default()
            },
            body: Body::Raw(RawObject::parse(bytes::Bytes::from(body.to_owned())).expect("json")),
            pass_headers: Vec::new(),
            cache_control: Default::default(),
        }
    }

    fn key(id: &str, team: &str) -> KeyEntry {
        let mut k = KeyEntry {
            id: id.into(),
            ..KeyEntry::default()
        };
        k.labels.insert("team".into(), team.into());
        k
    }

    fn policy(scope: Scope) -> Policy {
        Policy {
            ttl: std::time::Duration::from_secs(60),
            scope,
            max_temperature: Some(0.5),
            streaming: true,
            max_entries: None,
            semantic: None,
        }
    }

    fn semantic(text: Text) -> Policy {
        Policy {
            semantic: Some(super::super::Semantic {
                threshold: 0.9,
                text,
                source: "builtin".into(),
            }),
            ..policy(Scope::Key)
        }
    }

    fn probe(p: &Policy, body: &str) -> Probe {
        match plan(p, "r", &key("k1", "red"), &incoming(body, false)) {
            Plan::Use(Key {
                probe: Some(probe), ..
            }) => probe,
            other => panic!("no probe: {other:?}"),
        }
    }

    #[test]
    fn the_last_user_message_is_compared_and_everything_else_must_match() {
        let p = semantic(Text::LastUserMessage);
        let chat = |system: &str, question: &str| {
            format!(
                r#"{{"model":"m","temperature":0,"messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"earlier"}},{{"role":"assistant","content":"ok"}},{{"role":"user","content":[{{"type":"text","text":"{question}"}}]}}]}}"#
            )
        };
        let a = probe(&p, &chat("be brief", "What is the capital of France?"));
        let b = probe(&p, &chat("be brief", "Tell me the capital city of France"));
        assert_eq!(a.text, "What is the capital of France?");
        assert_eq!(a.set, b.set, "only the compared text differs: one set");
        assert!(a.set.starts_with("sy:cache:{r|key=k1}:v:"), "{}", a.set);
        let other_system = probe(&p, &chat("be verbose", "What is the capital of France?"));
        assert_ne!(
            a.set, other_system.set,
            "another system prompt, another set"
        );
        let other_model = probe(
            &p,
            &chat("be brief", "What is the capital of France?")
                .replace(r#""model":"m""#, r#""model":"n""#),
        );
        assert_ne!(a.set, other_model.set, "another model, another set");
        let Plan::Use(other_key) = plan(
            &p,
            "r",
            &key("k2", "red"),
            &incoming(&chat("be brief", "What is the capital of France?"), false),
        ) else {
            panic!("cached")
        };
        assert_ne!(
            a.set,
            other_key.probe.expect("probe").set,
            "another key's scope, another set"
        );
        let Plan::Use(exact) = plan(
            &p,
            "r",
            &key("k1", "red"),
            &incoming(&chat("be brief", "What is the capital of France?"), false),
        ) else {
            panic!("cached")
        };
        assert_eq!(exact.digest().len(), 64);
        assert!(exact.exact.starts_with(&exact.scope));
    }

    #[test]
    fn a_conversation_is_compared_whole_and_a_request_without_text_is_exact_only() {
        let p = semantic(Text::Conversation);
        let a = probe(
            &p,
            r#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(a.text, "system: be brief\nuser: hi");
        let b = probe(
            &p,
            r#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"be long"},{"role":"user","content":"hello"}]}"#,
        );
        assert_eq!(a.set, b.set, "the texts are compared, not matched");
        let Plan::Use(k) = plan(
            &semantic(Text::LastUserMessage),
            "r",
            &key("k1", "red"),
            &incoming(
                r#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"x"}]}"#,
                false,
            ),
        ) else {
            panic!("cached")
        };
        assert_eq!(k.probe, None, "no user message: exact only");
    }

    #[test]
    fn normalised_bodies_share_a_key_and_scopes_separate_them() {
        let p = policy(Scope::Key);
        let a = plan(
            &p,
            "r",
            &key("k1", "red"),
            &incoming(
                r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
                false,
            ),
        );
        let b = plan(
            &p,
            "r",
            &key("k1", "red"),
            &incoming(
                r#"{ "messages": [ {"content":"hi", "role":"user"} ], "stream": true, "user": "x", "temperature": 0, "model": "m" }"#,
                true,
            ),
        );
        assert_eq!(a, b, "key order, whitespace, stream and user do not matter");
        let other_key = plan(
            &p,
            "r",
            &key("k2", "red"),
            &incoming(
                r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
                false,
            ),
        );
        assert_ne!(a, other_key, "key scope: another key, another entry");
        let team = policy(Scope::Label("team".into()));
        let body = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(
            plan(&team, "r", &key("k1", "red"), &incoming(body, false)),
            plan(&team, "r", &key("k2", "red"), &incoming(body, false)),
            "label scope: one team shares"
        );
        assert_ne!(
            plan(&team, "r", &key("k1", "red"), &incoming(body, false)),
            plan(&team, "r", &key("k3", "blue"), &incoming(body, false)),
        );
        let different = plan(
            &p,
            "r",
            &key("k1", "red"),
            &incoming(
                r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hello"}]}"#,
                false,
            ),
        );
        assert_ne!(a, different);
    }

    #[test]
    fn hot_requests_and_unlabelled_keys_bypass() {
        let p = policy(Scope::Key);
        let hot = incoming(r#"{"model":"m","temperature":0.9,"messages":[]}"#, false);
        assert!(matches!(
            plan(&p, "r", &key("k", "t"), &hot),
            Plan::Bypass(_)
        ));
        let default_temperature = incoming(r#"{"model":"m","messages":[]}"#, false);
        assert!(matches!(
            plan(&p, "r", &key("k", "t"), &default_temperature),
            Plan::Bypass(_)
        ));
        let team = policy(Scope::Label("dept".into()));
        let cold = incoming(r#"{"model":"m","temperature":0,"messages":[]}"#, false);
        assert!(matches!(
            plan(&team, "r", &key("k", "t"), &cold),
            Plan::Bypass(_)
        ));
    }
}
