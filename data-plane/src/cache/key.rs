//! Which requests a route caches, and the key of one.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::{Policy, Scope, Text};
use crate::llm::{Incoming, Op};
use crate::policy::auth::KeyEntry;

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
pub(crate) enum Plan {
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
pub(crate) fn prefix(route: &str, scope: Option<&str>) -> String {
    match scope {
        Some(s) => format!("sy:cache:{{{route}|{s}}}:"),
        None => format!("sy:cache:{{{route}|"),
    }
}

/// `s` with Redis glob characters escaped.
pub(crate) fn glob_escape(s: &str) -> String {
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
pub(crate) fn scope_of(policy: &Policy, key: &KeyEntry) -> Option<String> {
    match &policy.scope {
        Scope::Key => Some(format!("key={}", key.id)),
        // Every key of the route, of one namespace: a route that admits other namespaces
        // never lets one tenant read another's answers, or learn what it asked.
        Scope::Route => Some(format!("route/{}", key.namespace())),
        // Labels are the key's namespace's to choose: the scope is the namespace's label, so
        // a key of another namespace with the same label never shares.
        Scope::Label(l) => key
            .labels
            .get(l)
            .map(|v| format!("{}/{l}={v}", key.namespace())),
    }
}

/// Fields that hold the conversation: the semantic cache takes its text from them.
const CONVERSATION: &[&str] = &["messages", "system", "prompt", "input", "instructions"];

/// Whether and under which keys a request is cached.
pub(crate) fn plan(policy: &Policy, route: &str, key: &KeyEntry, incoming: &Incoming) -> Plan {
    if incoming.op != Op::Generate {
        return Plan::Bypass("not a completion");
    }
    if incoming.facts.stream && !policy.streaming {
        return Plan::Bypass("streamed requests are not cached on this route");
    }
    if incoming.facts.stream
        && crate::dialect::codec(incoming.format)
            .generation()
            .map_or(true, |g| g.decode_answer.is_none())
    {
        // A hit would be replayed from the stored answer, which this API cannot read back.
        return Plan::Bypass("this API's answers are not replayed as streams");
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
        let Some(json) = raw.field_text(name) else {
            continue;
        };
        let Some(v) = tree(json) else {
            return Plan::Bypass("a field is nested too deep to cache");
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

/// A JSON value read by the shared reader ([`crate::llm::json`]), as the cache's normal
/// form needs it: object members sorted, strings decoded.
#[derive(Clone, Debug, PartialEq)]
enum Node<'t> {
    Object(Vec<(Cow<'t, str>, Node<'t>)>),
    Array(Vec<Node<'t>>),
    Str(Cow<'t, str>),
    /// A number or literal, as written.
    Scalar(&'t str),
    Null,
}

/// Deepest nesting a cached request may have (its normal form recurses).
const MAX_DEPTH: usize = 128;

impl<'t> Node<'t> {
    fn get(&self, key: &str) -> Option<&Node<'t>> {
        match self {
            Node::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Node<'t>> {
        match self {
            Node::Object(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A field's value as a tree; `None` when it is nested deeper than [`MAX_DEPTH`] (the
/// front door already read it, so it is JSON).
fn tree(json: &str) -> Option<Node<'_>> {
    use crate::llm::json::{Token, Tokens};
    // Open containers, each with the key it will be stored under in its parent.
    let mut open: Vec<(Node<'_>, Option<Cow<'_, str>>)> = Vec::new();
    let mut key: Option<Cow<'_, str>> = None;
    for t in Tokens::new(json) {
        let done = match t.ok()? {
            Token::ObjectStart(_) | Token::ArrayStart(_) if open.len() >= MAX_DEPTH => return None,
            Token::ObjectStart(_) => {
                open.push((Node::Object(Vec::new()), key.take()));
                continue;
            }
            Token::ArrayStart(_) => {
                open.push((Node::Array(Vec::new()), key.take()));
                continue;
            }
            Token::Key(k) => {
                key = Some(k.value(json));
                continue;
            }
            Token::ObjectEnd(_) | Token::ArrayEnd(_) => {
                let (node, k) = open.pop()?;
                key = k;
                node
            }
            Token::String(s) => Node::Str(s.value(json)),
            Token::Null(_) => Node::Null,
            Token::Number(r) | Token::True(r) | Token::False(r) => Node::Scalar(&json[r.range()]),
        };
        match open.last_mut() {
            None => return Some(done),
            Some((Node::Object(m), _)) => m.push((key.take().unwrap_or_default(), done)),
            Some((Node::Array(a), _)) => a.push(done),
            Some(_) => return None,
        }
    }
    None
}

/// Feeds one top-level field.
fn field(h: &mut Sha256, name: &str, v: &Node<'_>) {
    h.update(name.as_bytes());
    h.update([0]);
    canonical(v, h);
    h.update([0]);
}

/// `LastUserMessage`: takes the last user message's text out of a conversation field (a
/// messages or input array, or a prompt or input string) into `out`, and returns what is
/// left, to match exactly.
fn last_user_message<'t>(name: &str, mut v: Node<'t>, out: &mut String) -> Option<Node<'t>> {
    match &mut v {
        Node::Str(s) if name == "prompt" || name == "input" => {
            *out = std::mem::take(s).into_owned();
            None
        }
        Node::Array(items) if name == "messages" || name == "input" => {
            let last = items
                .iter_mut()
                .rev()
                .find(|m| m.get("role").and_then(Node::as_str) == Some("user"))
                .and_then(|m| m.get_mut("content"));
            if let Some(content) = last {
                out.clear();
                collect(content, out);
                *content = Node::Null;
            }
            Some(v)
        }
        _ => Some(v),
    }
}

/// `Conversation`: every text of a conversation field into `out`, one line each, messages
/// with their role.
fn conversation(v: Node<'_>, out: &mut String) {
    let mut push = |role: Option<&str>, v: &Node<'_>| {
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
        Node::Array(items) => {
            for m in items {
                let role = m.get("role").and_then(Node::as_str);
                match m.get("content") {
                    Some(c) => push(role, c),
                    None => push(role, m),
                }
            }
        }
        other => push(None, other),
    }
}

/// The words of a message's content: a string, or its text parts in order.
fn collect(v: &Node<'_>, out: &mut String) {
    let mut first = true;
    let mut push = |t: &str| {
        if !std::mem::take(&mut first) {
            out.push(' ');
        }
        out.push_str(t);
    };
    fn walk(v: &Node<'_>, push: &mut impl FnMut(&str)) {
        match v {
            Node::Str(s) => push(s),
            Node::Array(items) => items.iter().for_each(|i| walk(i, push)),
            Node::Object(m) => m
                .iter()
                .filter(|(k, _)| !crate::llm::text::NOT_WORDS.contains(&k.as_ref()))
                .for_each(|(_, v)| walk(v, push)),
            Node::Scalar(_) | Node::Null => {}
        }
    }
    walk(v, &mut push);
}

fn is_integer(t: &str) -> bool {
    t.bytes().all(|b| b.is_ascii_digit() || b == b'-')
}

/// Feeds a JSON value with its object keys sorted, strings and numbers in one form each.
fn canonical(v: &Node<'_>, h: &mut Sha256) {
    match v {
        Node::Object(map) => {
            let mut entries: Vec<&(Cow<'_, str>, Node<'_>)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            h.update(b"{");
            for (k, v) in entries {
                h.update(crate::llm::json::quoted(k).as_bytes());
                h.update(b":");
                canonical(v, h);
                h.update(b",");
            }
            h.update(b"}");
        }
        Node::Array(items) => {
            h.update(b"[");
            for i in items {
                canonical(i, h);
                h.update(b",");
            }
            h.update(b"]");
        }
        Node::Str(s) => h.update(crate::llm::json::quoted(s).as_bytes()),
        Node::Null => h.update(b"null"),
        Node::Scalar(t) => match t.parse::<f64>() {
            // One spelling per number (`0.50` and `0.5`); integers beyond f64's precision
            // and out-of-range numbers stay as written.
            Ok(f) if f.is_finite() && (t.len() < 16 || !is_integer(t)) => {
                h.update(format!("{f:?}").as_bytes());
            }
            _ => h.update(t.as_bytes()),
        },
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

    /// A streamed request of an API whose answers the gateway cannot read back (Responses,
    /// Completions) is not looked up: a hit could not be replayed. The same body unstreamed is.
    #[test]
    fn streams_of_apis_without_a_replay_bypass_the_cache() {
        let body = r#"{"model":"m","temperature":0,"input":"hi"}"#;
        for format in [Format::OpenAiResponses, Format::OpenAiCompletions] {
            let mut streamed = incoming(body, true);
            streamed.format = format;
            assert!(
                matches!(
                    plan(&policy(Scope::Key), "r", &key("k1", "red"), &streamed),
                    Plan::Bypass(_)
                ),
                "{format:?}"
            );
            let mut whole = incoming(body, false);
            whole.format = format;
            assert!(matches!(
                plan(&policy(Scope::Key), "r", &key("k1", "red"), &whole),
                Plan::Use(_)
            ));
        }
        assert!(matches!(
            plan(
                &policy(Scope::Key),
                "r",
                &key("k1", "red"),
                &incoming(body, true)
            ),
            Plan::Use(_)
        ));
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
        // A label is its namespace's: the same team label in another namespace never shares.
        assert_ne!(
            plan(&team, "r", &key("victim/k1", "red"), &incoming(body, false)),
            plan(&team, "r", &key("evil/k1", "red"), &incoming(body, false)),
            "label scope: another namespace, another scope"
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
    fn numbers_and_escapes_have_one_spelling_and_depth_is_bounded() {
        let p = policy(Scope::Key);
        let k = key("k1", "red");
        let a = plan(
            &p,
            "r",
            &k,
            &incoming(
                r#"{"model":"m","temperature":0,"top_p":0.50,"messages":[{"role":"user","content":"h\u0069"}]}"#,
                false,
            ),
        );
        let b = plan(
            &p,
            "r",
            &k,
            &incoming(
                r#"{"model":"m","temperature":0.0,"top_p":0.5,"messages":[{"role":"user","content":"hi"}]}"#,
                false,
            ),
        );
        assert_eq!(a, b);
        let huge = plan(
            &p,
            "r",
            &k,
            &incoming(
                r#"{"model":"m","temperature":0,"x":1e400,"messages":[]}"#,
                false,
            ),
        );
        assert!(matches!(huge, Plan::Use(_)), "any JSON number is a number");
        let deep = format!(
            r#"{{"model":"m","temperature":0,"x":{}1{},"messages":[]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(matches!(
            plan(&p, "r", &k, &incoming(&deep, false)),
            Plan::Bypass(_)
        ));
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
