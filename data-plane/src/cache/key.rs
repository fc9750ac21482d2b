//! Which requests a route caches, and the key of one.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Policy, Scope};
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
    /// Look up and/or fill under this key.
    Use(String),
}

/// `sy:cache:<route>:<scope>:` — every key of a route (and scope) starts with it.
pub fn prefix(route: &str, scope: Option<&str>) -> String {
    match scope {
        Some(s) => format!("sy:cache:{route}:{s}:"),
        None => format!("sy:cache:{route}:"),
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

/// Whether and under which key a request is cached.
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
    let mut h = Sha256::new();
    h.update(incoming.format.label().as_bytes());
    h.update([0]);
    for name in names {
        let Some(bytes) = raw.get(name) else { continue };
        let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
            return Plan::Bypass("a field is not JSON");
        };
        h.update(name.as_bytes());
        h.update([0]);
        canonical(&v, &mut h);
        h.update([0]);
    }
    Plan::Use(format!(
        "{}{}",
        prefix(route, Some(&scope)),
        hex::encode(h.finalize())
    ))
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
        }
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
